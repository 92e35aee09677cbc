"""Accuracies of the members and of the rows that combine them, against counts worked out by hand."""

import pytest
import torch

from okd_ray.metrics import accuracy


def test_ensemble_fused_and_gated_teacher_rows():
    labels = torch.tensor([0, 1, 2])
    z0 = torch.tensor([[3.0, 0, 0], [0, 0, 1], [0, 2, 0]])  # right, wrong, wrong
    z1 = torch.tensor([[0.0, 1, 0], [0, 3, 0], [0, 0, 3]])  # wrong, right, right
    gate = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1]])  # the teacher: 0.9·z0 + 0.1·z1, ...
    fused = torch.tensor([[1.0, 0, 0], [1, 0, 0], [1, 0, 0]])  # right once
    got = accuracy([(labels, [z0, z1], fused, gate)], ["m0", "m1"], "val")
    assert {part: row["val_top1"] for part, row in got.items()} == pytest.approx(
        # ensemble (z0 + z1)/2: [1.5, .5, 0] right, [0, 1.5, .5] right, [0, 1, 1.5] right
        # teacher: [2.7, .1, 0] right, [0, 2.7, .1] right, [0, 1.8, .3] wrong
        {"m0": 100 / 3, "m1": 200 / 3, "ensemble": 100, "fused": 100 / 3, "teacher": 200 / 3}
    )
    assert accuracy([(labels, [z0, z1], None, None)], ["m0", "m1"], "test").keys() == {"m0", "m1", "ensemble"}

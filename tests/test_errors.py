"""okd-ray's errors carry their facts as fields, build their message from them, and survive pickling (an error
raised in a Ray actor reaches the driver as a pickled copy)."""

import pickle
import signal

import pytest

from okd_ray.errors import (
    CheckpointDamaged,
    ClusterUnreachable,
    FileDamaged,
    FolderLocked,
    FolderNotWritable,
    Interrupted,
    TermFailed,
    Terminated,
    TrainingDiverged,
    signal_of,
)

ERRORS = [
    TrainingDiverged("m0:cnn16", "ring_kl", float("nan"), 2, 7, ("members.0.optimizer.lr", "method.ring_kl.weight")),
    TrainingDiverged("fused", "fusion_ce", float("inf"), 1, 3, ("method.fusion.optimizer.lr",), "kept in x"),
    CheckpointDamaged("/r/checkpoints/epoch-0002/m0.pt", "is missing"),
    CheckpointDamaged("/r/checkpoints/manifest.json", "cannot be read (bad JSON)", "; start the run over"),
    FileDamaged("/r/metrics.parquet", "is missing", "; put it back"),
    FolderLocked("/r", 4242, "node-1", "2026-12-01T00:00:00"),
    FolderNotWritable("/r/.okd-ray.lock", "/r", "Read-only file system"),
    TermFailed("m0:cnn16", "mine", 1, 3, "raised ValueError: no", "/p/mine.py:12"),
    ClusterUnreachable("10.0.0.1:6379", "Connection refused"),
    Interrupted("interrupted; continue with: okd-ray train --resume /r", signal.SIGTERM),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_survive_pickling_with_their_fields_and_message(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)
    assert same_fields(vars(copy), vars(error)) and len(copy.args) == len(error.args)


def same_fields(a: dict, b: dict) -> bool:
    """Equal, NaN equal to NaN (a diverged value)."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)


def test_the_divergence_message_is_built_from_its_fields():
    error = TrainingDiverged("m1:resnet8", "adversarial", float("nan"), 3, 12, ("a.lr", "b.weight"))
    assert str(error) == "m1:resnet8: 'adversarial' is nan at epoch 3, step 12; lower a.lr or b.weight"
    assert str(error.keeping("the last good checkpoint (epoch 2) is kept in m.json")) == (
        "m1:resnet8: 'adversarial' is nan at epoch 3, step 12; lower a.lr or b.weight; "
        "the last good checkpoint (epoch 2) is kept in m.json"
    )


def test_sigterm_and_ctrl_c_exit_as_the_shell_counts_them():
    assert Interrupted("x", signal_of(Terminated())).exit_code == 143
    assert Interrupted("x", signal_of(KeyboardInterrupt())).exit_code == 130

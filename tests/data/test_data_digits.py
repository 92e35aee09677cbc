"""The embedded digits data set: shapes, statistics, limits and seeded order."""

import pytest
import torch

from okd_ray.data import DataInfo, Dataset, build_dataset


def collect(batches):
    xs, ys = zip(*(batch[:2] for batch in batches), strict=True)  # training batches carry ids too
    return torch.cat(xs), torch.cat(ys)


def test_shapes_dtypes_and_labels():
    data = build_dataset("digits", batch_size=100)
    assert isinstance(data, Dataset)
    assert data.info == DataInfo("digits", in_channels=1, num_classes=10, image_size=8)
    batches = list(data.train_batches(0))
    assert len(batches) == data.num_train_batches() == 15  # 1437 train images, last batch kept
    assert [len(y) for _, y, _ in batches][-1] == 37
    x, y = collect(batches)
    assert x.shape == (1437, 1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    tx, ty = collect(data.eval_batches("test"))
    assert tx.shape == (360, 1, 8, 8) and ty.dtype == torch.int64
    assert ty.min() >= 0 and ty.max() <= 9


def test_train_split_is_normalised():
    x, _ = collect(build_dataset("digits").train_batches(0))
    assert abs(x.mean().item()) < 1e-3
    assert abs(x.std().item() - 1) < 1e-3


def test_every_epoch_is_a_permutation_of_the_same_split():
    data = build_dataset("digits", batch_size=64)
    x0, y0 = collect(data.train_batches(0))
    x1, y1 = collect(data.train_batches(1))
    assert not torch.equal(y0, y1)
    assert torch.equal(y0.sort().values, y1.sort().values)
    assert torch.equal(x0.flatten().sort().values, x1.flatten().sort().values)


def test_limits_keep_the_first_samples():
    full = build_dataset("digits", batch_size=1000)
    small = build_dataset("digits", batch_size=16, train_limit=50, test_limit=30, test_batch_size=7)
    assert small.num_train_batches() == 4
    assert [len(y) for _, y, _ in small.train_batches(0)] == [16, 16, 16, 2]
    assert [len(y) for _, y in small.eval_batches("test")] == [7, 7, 7, 7, 2]
    assert small.num_eval_batches("test") == 5
    x_small, _ = collect(small.eval_batches("test"))
    x_full, _ = next(iter(full.eval_batches("test")))
    assert torch.equal(x_small, x_full[:30])


def test_same_seed_same_batches_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a = build_dataset("digits", batch_size=50, seed=3)
    b = build_dataset("digits", batch_size=50, seed=3)
    for epoch in (0, 1):
        for (xa, ya, _), (xb, yb, _) in zip(a.train_batches(epoch), b.train_batches(epoch), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(next(a.train_batches(0))[1], next(a.train_batches(1))[1])
    other = build_dataset("digits", batch_size=50, seed=4)
    assert not torch.equal(next(a.train_batches(0))[1], next(other.train_batches(0))[1])
    list(a.eval_batches("test"))
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("validation, held", [(0.1, 26), (30, 30)])
def test_validation_split(check_validation_split, validation, held):
    """A share or a count of the first 256 training images."""
    data = build_dataset("digits", batch_size=64, train_limit=256, validation=validation)
    assert data.num_eval_batches("val") == 1
    check_validation_split(
        lambda **kw: build_dataset("digits", train_limit=256, validation=validation, **kw), 256, held
    )

"""The synthetic CIFAR-shaped set used by the benchmarks."""

import torch

from okd_ray.data import build_dataset


def test_cifar_shaped_and_deterministic():
    a = build_dataset("synthetic-cifar100", batch_size=64, test_batch_size=64, train_limit=128)
    b = build_dataset("synthetic-cifar100", batch_size=64, train_limit=128)
    assert (a.info.in_channels, a.info.num_classes, a.info.image_size) == (3, 100, 32)
    (xa, ya, _), (xb, yb, _) = next(a.train_batches(1)), next(b.train_batches(1))
    assert xa.shape == (64, 3, 32, 32) and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.num_eval_batches("test") == 2000 // 64 + 1

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


def test_a_data_set_on_a_device_makes_every_batch_there_from_the_same_draws():
    """A part on a GPU keeps the images there and augments there. The meta device (shapes, no values) refuses any
    CPU tensor that would meet a device one, as CUDA does: every index, draw and constant must be moved. The CPU
    generators are the same: their next draws are as the CPU data set's."""
    data = build_dataset("synthetic-cifar100", batch_size=32, test_batch_size=32, train_limit=64, test_limit=40)
    assert data.on(torch.device("cpu")) is data
    meta = data.on(torch.device("meta"))
    assert meta is data.on(torch.device("meta"))  # copied once
    for x, y, ids in meta.train_batches(0, stream=1):
        assert x.shape == (32, 3, 32, 32) and {x.device.type, y.device.type, ids.device.type} == {"meta"}
    assert [x.shape[0] for x, _ in meta.eval_batches("test")] == [32, 8]
    assert all(x.device.type == "meta" for x, _ in meta.eval_batches("test"))
    assert next(data.train_batches(0, stream=1))[0].device.type == "cpu"  # the CPU data set is untouched

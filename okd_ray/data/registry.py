"""Data sets by name: a plain dict from the config's `data.name` to a builder."""

from __future__ import annotations

from collections.abc import Callable

from okd_ray.data import cifar, digits, fashion_mnist, imagefolder, synthetic
from okd_ray.data.base import Dataset
from okd_ray.errors import DataError

DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": digits.build,
    "fashion-mnist": fashion_mnist.build,
    "cifar10": cifar.build_cifar10,
    "cifar100": cifar.build_cifar100,
    "imagefolder": imagefolder.build,
    "synthetic-cifar100": synthetic.build,
}


def build_dataset(name: str, *, root: str | None = None, batch_size: int = 128,
                  test_batch_size: int | None = None, seed: int = 0, download: bool = False,
                  augment: bool = True, train_limit: int | None = None, test_limit: int | None = None,
                  num_workers: int = 0, image_size: int | None = None, validation: float | int = 0) -> Dataset:
    """Build a data set by name.

    train_limit/test_limit keep the first N samples of a split (tiny runs); validation holds a seeded,
    stratified share (0 < f < 1) or count of those training images out of training; image_size only applies
    to imagefolder (the others have a fixed size). Training batches keep the last partial batch.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r} (data.name); choose one of: {', '.join(DATASETS)}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DataError(f"data.num_workers must be a non-negative integer, got {num_workers!r}")
    return DATASETS[name](root=root, batch_size=batch_size, test_batch_size=test_batch_size, seed=seed,
                          download=download, augment=augment, train_limit=train_limit,
                          test_limit=test_limit, num_workers=num_workers, image_size=image_size,
                          validation=validation)

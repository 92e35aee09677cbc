"""Data sets by name: a plain dict from the config's ``data.name`` to a builder of the data set, which receives
the whole ``data`` section and the run's seed. Users add theirs with ``register_dataset`` from a plugin."""

from __future__ import annotations

import os
from collections.abc import Callable

from pydantic import ValidationError

from okd_ray.errors import DataError
from okd_ray.registry import register

from . import cifar, digits, fashion_mnist, imagefolder, synthetic
from .base import Dataset
from .config import DataConfig

Builder = Callable[[DataConfig, int], Dataset]  # (the data section, the run's seed) -> the data set

DATASETS: dict[str, Builder] = {
    "digits": digits.build,
    "fashion-mnist": fashion_mnist.build,
    "cifar10": cifar.build_cifar10,
    "cifar100": cifar.build_cifar100,
    "imagefolder": imagefolder.build,
    "synthetic-cifar100": synthetic.build,
}


def register_dataset(name: str, builder: Builder) -> Builder:
    """Make ``builder`` known as ``data.name: NAME``; a name stands for one builder only."""
    return register(DATASETS, "data set", name, builder)


def build_dataset(name: str, *, seed: int = 0, **settings) -> Dataset:
    """The data set ``name`` with the ``data.*`` settings given (the config's defaults for the rest).

    Training batches keep the last partial batch; see ``DataConfig`` for what each setting does."""
    if isinstance(settings.get("root"), os.PathLike):
        settings["root"] = os.fspath(settings["root"])
    try:
        config = DataConfig(name=name, **settings)
    except ValidationError as e:
        raise DataError(
            "; ".join(
                f"data.{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}"
                for err in e.errors()
            )
        ) from None
    return DATASETS[config.name](config, seed)

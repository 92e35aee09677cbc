"""What every data set offers the trainer, whatever its source."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

from okd_ray.errors import DataError


@dataclass(frozen=True)
class DataInfo:
    """The facts a model needs to be built for a data set."""

    name: str
    in_channels: int
    num_classes: int
    image_size: int  # square side of the network input


Split = Literal["val", "test"]  # the evaluation splits: validation (held out of training) and test


@runtime_checkable
class Dataset(Protocol):
    """Batches of float32 NCHW normalised images and int64 labels.

    Training order and augmentation depend only on (seed, epoch), never on a global RNG, so every
    process that builds the same data set sees bit-identical batches: the members of a population
    can each load their own data and still train on the same samples.
    """

    info: DataInfo

    def train_batches(self, epoch: int, stream: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches; a ``stream`` draws its own augmentation of the same images (KDCL)."""

    def eval_batches(self, split: Split) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split's batches in a fixed order, never augmented; ``val`` is empty without a validation split."""

    def num_train_batches(self) -> int: ...

    def num_eval_batches(self, split: Split) -> int: ...


def check_batching(batch_size: int, test_batch_size: int | None, train_limit: int | None,
                   test_limit: int | None) -> None:
    """Reject sizes that would give empty or endless epochs, naming the config key."""
    for key, value in [("batch_size", batch_size), ("test_batch_size", test_batch_size),
                       ("train_limit", train_limit), ("test_limit", test_limit)]:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DataError(f"data.{key} must be a positive integer, got {value!r}")

"""What every data set offers the trainer, whatever its source."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch



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

    def train_batches(self, epoch: int, stream: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]]:
        """The epoch's batches (images, labels, ids); a ``stream`` draws its own augmentation of the same images
        (KDCL). A sample's id (int64) is its index among the data set's training images, the same every epoch,
        for terms that follow a sample from epoch to epoch."""

    def eval_batches(self, split: Split) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split's batches in a fixed order, never augmented; ``val`` is empty without a validation split."""

    def num_train_batches(self) -> int: ...

    def num_train_images(self) -> int:
        """How many images an epoch trains on (the last batch holds what the others leave): replicas of a part
        each take a share of every batch, so a batch smaller than the replica count is refused before a run."""

    def num_eval_batches(self, split: Split) -> int: ...

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


@dataclass(frozen=True)
class Normalisation:
    """How a data set makes a network's input from pixels: ``(pixels / max_value − mean) / std`` per channel (for
    imagefolder, of a test image whose shorter side was resized to ``resize`` and centre-cropped). A data set
    offers it as its ``normalisation`` attribute, so that a trained model can be fed without the data set."""

    mean: tuple[float, ...]  # per channel, in units of max_value
    std: tuple[float, ...]
    max_value: float = 255  # the pixel value that means 1.0
    resize: int | None = None

    def unit(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(torch.float32) / self.max_value

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (…×C×H×W, in [0, 1]) less the mean, over the standard deviation, per channel."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        return (x - mean) / torch.tensor(self.std, dtype=torch.float32, device=x.device).view(-1, 1, 1)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.standardise(self.unit(pixels))


Split = Literal["val", "test"]  # the evaluation splits: validation (held out of training) and test


@runtime_checkable
class Dataset(Protocol):
    """Batches of float32 NCHW normalised images and int64 labels.

    Training order and augmentation depend only on (seed, epoch), never on a global RNG, so every
    process that builds the same data set sees bit-identical batches: the members of a population
    can each load their own data and still train on the same samples.

    A data set may also say how it normalises (``normalisation``, a ``Normalisation``): the run records it, so
    that ``okd_ray.load_transform`` can give it where the data set is not; and it may keep its images on a part's
    device (``on(device)``, giving the data set there), as the in-memory ones do.
    """

    info: DataInfo

    def train_batches(
        self, epoch: int, stream: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
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


def on_device(dataset: Dataset | None, device: torch.device) -> Dataset | None:
    """``dataset`` with its images on ``device`` where it keeps them in memory (``on``); else as it is (its batches
    move to the device one at a time)."""
    place = getattr(dataset, "on", None)
    return place(device) if place is not None else dataset

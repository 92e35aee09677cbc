"""Small data sets held whole in memory: order and augmentation per batch from (seed, epoch) generators.

No DataLoader and no worker processes: a batch is an index into a uint8 tensor, so it costs
microseconds and is bit-identical in every process that builds the same data set. A part on a GPU keeps the
tensors there (``on``) and makes its batches there, from the same draws of the same CPU generators.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from okd_ray.data.augment import PadCropFlip
from okd_ray.data.base import DataInfo, Normalisation, Split
from okd_ray.data.config import DataConfig
from okd_ray.data.split import hold_out
from okd_ray.errors import DataError
from okd_ray.seeding import generator


@dataclass(frozen=True)
class InMemory:
    """A whole data set as a reader hands it over: integer pixels, labels and how to normalise them."""

    info: DataInfo
    train_images: torch.Tensor  # uint8, N x C x H x W
    train_labels: torch.Tensor  # int64, N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    max_value: float  # the pixel value that means 1.0: 255, or 16 for the digits
    mean: tuple[float, ...]  # per channel, in [0, 1] units
    std: tuple[float, ...]
    augmentation: PadCropFlip | None = None


class TensorDataset:
    """A `Dataset` over an `InMemory` data set."""

    def __init__(self, data: InMemory, config: DataConfig, seed: int):
        # data.num_workers is not used: slicing a tensor needs no workers.
        if config.image_size is not None and config.image_size != data.info.image_size:
            size = data.info.image_size
            raise DataError(
                f"{data.info.name} images are {size}x{size}; data.image_size={config.image_size} "
                "can only be changed for imagefolder (leave it unset)"
            )
        for labels in (data.train_labels, data.test_labels):
            if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < data.info.num_classes:
                raise DataError(
                    f"{data.info.name} labels must lie in 0..{data.info.num_classes - 1}, "
                    f"found {int(labels.min())}..{int(labels.max())}"
                )
        self.info = data.info
        self.batch_size, self.test_batch_size = config.batch_size, config.test_batch_size
        self.seed = seed
        if config.augment_per_member and data.augmentation is None:
            raise DataError(
                f"data.augment_per_member: {data.info.name} has no augmentation to draw per member, so "
                "every member would see the same images; leave it false, or use a data set with one "
                "(fashion-mnist, cifar10, cifar100, imagefolder)"
            )
        self.augmentation = data.augmentation if config.augment else None
        images, labels = data.train_images[: config.train_limit], data.train_labels[: config.train_limit]
        train, held = hold_out(labels, config.validation, seed)  # of the training images in use
        self._train = (images[train], labels[train])
        self._train_ids = train  # each training image's index among the images in use
        self._eval = {
            "val": (images[held], labels[held]),
            "test": (data.test_images[: config.test_limit], data.test_labels[: config.test_limit]),
        }
        self.normalisation = Normalisation(data.mean, data.std, data.max_value)
        self._placed: dict[torch.device, TensorDataset] = {}

    def on(self, device: torch.device) -> TensorDataset:
        """This data set with its tensors on ``device`` (copied once per device), where its batches are then made."""
        device = torch.device(device)
        if device == self._train[0].device:
            return self
        if device not in self._placed:
            placed = copy.copy(self)
            move = lambda pair: tuple(t.to(device) for t in pair)  # noqa: E731
            placed._train, placed._train_ids = move(self._train), self._train_ids.to(device)
            placed._eval = {split: move(pair) for split, pair in self._eval.items()}
            placed._placed = {}
            self._placed[device] = placed
        return self._placed[device]

    def num_train_batches(self) -> int:
        return math.ceil(self.num_train_images() / self.batch_size)

    def num_train_images(self) -> int:
        return len(self._train[1])

    def num_eval_batches(self, split: Split) -> int:
        return math.ceil(len(self._eval[split][1]) / self.test_batch_size)

    def train_batches(
        self, epoch: int, stream: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        images, labels = self._train
        order = torch.randperm(len(labels), generator=generator("order", self.seed, epoch)).to(labels.device)
        for batch, start in enumerate(range(0, len(labels), self.batch_size)):
            index = order[start : start + self.batch_size]
            x = self.normalisation.unit(images[index])
            if self.augmentation is not None:
                # One generator per batch: batch b is the same whatever was drawn before it.
                keys = ("augment", self.seed, epoch, batch) + (() if stream is None else (stream,))
                x = self.augmentation(x, generator(*keys))
            yield self.normalisation.standardise(x), labels[index], self._train_ids[index]

    def eval_batches(self, split: Split) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self._eval[split]
        for start in range(0, len(labels), self.test_batch_size):
            stop = start + self.test_batch_size
            yield self.normalisation(images[start:stop]), labels[start:stop]

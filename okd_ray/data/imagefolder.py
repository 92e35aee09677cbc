"""ImageNet-style trees (root/train/<class>/*, root/val/<class>/*), decoded by DataLoader workers.

Each image is transformed under its own (seed, epoch, index) seed inside a forked RNG, so the
augmentation of a sample does not depend on which worker loads it, on the number of workers, or on
torch's global RNG; the order comes from a generator seeded by (seed, epoch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from okd_ray.data.base import DataInfo, Normalisation, Split
from okd_ray.data.config import DataConfig
from okd_ray.data.split import hold_out
from okd_ray.errors import DataError
from okd_ray.seeding import derive_seed, generator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUT = "<root>/train/<class>/<image> and <root>/val/<class>/<image>"


class _SeededView(torch.utils.data.Dataset):
    """The samples ``indices`` of a folder, each transformed with its own seed (keyed by its folder index)."""

    def __init__(
        self,
        folder: Any,
        indices: list[int],
        transform: Callable,
        seed: int,
        epoch: int,
        stream: int | None = None,
        ids: bool = False,
    ):
        self.folder, self.indices, self.transform, self.ids = folder, indices, transform, ids
        self.keys = (seed, epoch) + (() if stream is None else (stream,))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple:
        """(image, label), and with ``ids`` the sample's index in its folder."""
        index = self.indices[position]
        image, label = self.folder[index]
        # torchvision's transforms draw from the global RNG; fork it so the caller's stream is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("image", *self.keys, index))
            return (self.transform(image), label, index) if self.ids else (self.transform(image), label)


def _open(split: Path) -> Any:
    from torchvision.datasets import ImageFolder  # imported here: torchvision costs seconds to import

    try:
        return ImageFolder(str(split))
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"imagefolder: cannot read {split}: {e}. Expected {LAYOUT}") from e


class ImageFolderDataset:
    """A `Dataset` over an ImageNet-style tree; DataLoader workers decode and augment the images."""

    def __init__(self, config: DataConfig, seed: int):
        from torchvision import transforms as T

        root = config.root
        if root is None:
            raise DataError(f"imagefolder needs data.root=... pointing at a tree laid out as {LAYOUT}")
        base = Path(root).expanduser()
        for split in ("train", "val"):
            if not (base / split).is_dir():
                raise DataError(f"imagefolder: {base / split} is not a folder. Expected {LAYOUT}")
        self._train, test = _open(base / "train"), _open(base / "val")
        if test.class_to_idx != self._train.class_to_idx:
            raise DataError(
                f"imagefolder: {base / 'val'} and {base / 'train'} must hold the same class "
                f"folders, found {test.classes} and {self._train.classes}"
            )
        size = config.image_size or 224
        self.info = DataInfo("imagefolder", in_channels=3, num_classes=len(self._train.classes), image_size=size)
        self.batch_size, self.test_batch_size = config.batch_size, config.test_batch_size
        self.seed, self.num_workers = seed, config.num_workers
        # The validation split is held out of train/ (by its labels, no image decoded); val/ is the test set.
        labels = torch.tensor(self._train.targets[: config.train_limit or len(self._train)])
        train, held = hold_out(labels, config.validation, seed)
        self._train_indices = train.tolist()
        self._eval = {
            "val": (self._train, held.tolist()),
            "test": (test, list(range(min(len(test), config.test_limit or len(test))))),
        }
        self.normalisation = Normalisation(IMAGENET_MEAN, IMAGENET_STD, 255, resize=round(size * 256 / 224))
        normalise = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        self._test_transform = T.Compose([T.Resize(self.normalisation.resize), T.CenterCrop(size), *normalise])
        self._train_transform = (
            T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *normalise])
            if config.augment
            else self._test_transform
        )

    def num_train_batches(self) -> int:
        return math.ceil(self.num_train_images() / self.batch_size)

    def num_train_images(self) -> int:
        return len(self._train_indices)

    def num_eval_batches(self, split: Split) -> int:
        return math.ceil(len(self._eval[split][1]) / self.test_batch_size)

    def train_batches(
        self, epoch: int, stream: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        count = len(self._train_indices)
        order = torch.randperm(count, generator=generator("order", self.seed, epoch)).tolist()
        view = _SeededView(self._train, self._train_indices, self._train_transform, self.seed, epoch, stream, ids=True)
        yield from self._loader(view, self.batch_size, order)

    def eval_batches(self, split: Split) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        folder, indices = self._eval[split]
        view = _SeededView(folder, indices, self._test_transform, self.seed, 0)
        yield from self._loader(view, self.test_batch_size, range(len(indices)))

    def _loader(self, view: _SeededView, batch_size: int, order: Any) -> DataLoader:
        # An explicit generator: otherwise DataLoader draws its workers' base seed from the global RNG.
        return DataLoader(
            view,
            batch_size=batch_size,
            sampler=order,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )


def build(config: DataConfig, seed: int) -> ImageFolderDataset:
    """There is nothing to download for a local tree: data.download is not used."""
    return ImageFolderDataset(config, seed)

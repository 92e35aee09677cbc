"""CIFAR-10 and CIFAR-100 from the pickled python batches that torchvision downloads.

We read the pickles ourselves: torchvision's classes refuse any file whose md5 differs from the
release, which rules out subsets and the small files the tests write.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from okd_ray.data.augment import PadCropFlip
from okd_ray.data.base import DataInfo
from okd_ray.data.config import DataConfig
from okd_ray.data.paths import data_root
from okd_ray.data.tensor_dataset import InMemory, TensorDataset
from okd_ray.errors import DataError


@dataclass(frozen=True)
class Layout:
    """Where one CIFAR release keeps its batches, how it names labels, and its statistics."""

    name: str
    num_classes: int
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


CIFAR10 = Layout(
    "cifar10",
    10,
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    "labels",
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = Layout(
    "cifar100",
    100,
    "cifar-100-python",
    ("train",),
    ("test",),
    "fine_labels",
    mean=(129.3 / 255, 124.1 / 255, 112.4 / 255),
    std=(68.2 / 255, 65.4 / 255, 70.4 / 255),
)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else: a pickle from disk could otherwise run code."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 3 x 32 x 32 uint8) and labels from one pickled batch."""
    try:
        # encoding="bytes": the release was pickled by Python 2, so its keys come back as bytes.
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, KeyError, ValueError) as e:
        raise DataError(f"cannot read CIFAR batch {path}: {e!r}") from e
    if len(images) != len(labels):
        raise DataError(f"{path} holds {len(images)} images but {len(labels)} labels")
    return images, labels


def fetch(layout: Layout, root: Path) -> None:
    """Download and unpack the release with torchvision (it checks the archive's md5)."""
    from torchvision import datasets  # imported here: only downloads need torchvision

    release = datasets.CIFAR10 if layout is CIFAR10 else datasets.CIFAR100
    try:
        release(str(root), train=True, download=True)
    except (OSError, RuntimeError) as e:
        raise DataError(f"{layout.name} download to {root} failed: {e}") from e


def load(layout: Layout, root: str | None = None, download: bool = False) -> InMemory:
    """Read every batch of the release under root, downloading it first if asked and missing."""
    base = data_root(root)
    folder = base / layout.folder
    needed = [folder / f for f in layout.train_files + layout.test_files]
    if download and not all(p.is_file() for p in needed):
        fetch(layout, base)
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise DataError(
            f"{layout.name}: looked in {folder} and did not find {', '.join(missing)}. "
            f"Set data.download=true to fetch it, or data.root=... to the folder that holds {layout.folder}/."
        )

    def split(files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [read_batch(folder / f, layout.label_key) for f in files]
        return (
            torch.from_numpy(np.concatenate([images for images, _ in parts])),
            torch.from_numpy(np.concatenate([labels for _, labels in parts])),
        )

    train_images, train_labels = split(layout.train_files)
    test_images, test_labels = split(layout.test_files)
    return InMemory(
        info=DataInfo(layout.name, in_channels=3, num_classes=layout.num_classes, image_size=32),
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        max_value=255,
        mean=layout.mean,
        std=layout.std,
        augmentation=PadCropFlip(pad=4, mode="reflect"),
    )


def build_cifar10(config: DataConfig, seed: int) -> TensorDataset:
    return TensorDataset(load(CIFAR10, config.root, config.download), config, seed)


def build_cifar100(config: DataConfig, seed: int) -> TensorDataset:
    return TensorDataset(load(CIFAR100, config.root, config.download), config, seed)

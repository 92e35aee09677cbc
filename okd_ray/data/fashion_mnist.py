"""Fashion-MNIST from IDX files (plain or .gz): a given root, torchvision's download folder, or Debian's package."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch

from okd_ray.data.augment import PadCropFlip
from okd_ray.data.base import DataInfo
from okd_ray.data.config import DataConfig
from okd_ray.data.paths import data_root
from okd_ray.data.tensor_dataset import InMemory, TensorDataset
from okd_ray.errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def search_dirs(root: str | None) -> list[Path]:
    """The folders looked in, in order: root, where torchvision downloads to under it, Debian's."""
    base = data_root(root)
    return [base, base / "FashionMNIST" / "raw", DEBIAN_DIR]


def find(folder: Path) -> list[Path] | None:
    """The four IDX files in folder, each plain or gzipped, or None if any is missing."""
    found = []
    for name in FILES:
        candidates = [folder / name, folder / f"{name}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes as an array of the shape its header gives."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(shape):
        raise DataError(f"{path} holds {len(raw) - header} bytes of data but its header says {shape}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def fetch(root: str | None) -> None:
    """Fetch with torchvision into root/FashionMNIST/raw, the second folder we search."""
    from torchvision.datasets import FashionMNIST  # only downloads need torchvision

    try:
        FashionMNIST(str(data_root(root)), train=True, download=True)
    except (OSError, RuntimeError) as e:
        raise DataError(f"fashion-mnist download to {data_root(root)} failed: {e}") from e


def load(root: str | None = None, download: bool = False) -> InMemory:
    """Read the first folder that holds all four files; download first if asked and none does."""
    dirs = search_dirs(root)
    files = next((f for f in map(find, dirs) if f is not None), None)
    if files is None and download:
        fetch(root)
        files = next((f for f in map(find, dirs) if f is not None), None)
    if files is None:
        looked = "\n  ".join(str(d) for d in dirs)
        raise DataError(
            f"fashion-mnist: no folder holds {', '.join(FILES)} (each plain or .gz). Looked in:\n  {looked}\n"
            "Get it with `apt-get install dataset-fashion-mnist`, or set data.download=true, "
            "or point data.root=... at a folder holding the files."
        )
    train_x, train_y, test_x, test_y = (read_idx(p) for p in files)
    for images, labels, split in [(train_x, train_y, "train"), (test_x, test_y, "t10k")]:
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"fashion-mnist {split} files in {files[0].parent} disagree: "
                f"images {images.shape}, labels {labels.shape}"
            )
    size = train_x.shape[-1]
    return InMemory(
        info=DataInfo("fashion-mnist", in_channels=1, num_classes=10, image_size=size),
        train_images=torch.from_numpy(train_x.copy())[:, None],
        train_labels=torch.from_numpy(train_y.astype(np.int64)),
        test_images=torch.from_numpy(test_x.copy())[:, None],
        test_labels=torch.from_numpy(test_y.astype(np.int64)),
        max_value=255,
        mean=(0.2860,),
        std=(0.3530,),
        augmentation=PadCropFlip(pad=2),
    )


def build(config: DataConfig, seed: int) -> TensorDataset:
    return TensorDataset(load(config.root, config.download), config, seed)

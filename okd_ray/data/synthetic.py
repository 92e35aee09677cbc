"""Random CIFAR-shaped images with random labels: for benchmarks (throughput, not accuracy) anywhere."""

from __future__ import annotations

import functools

import torch

from okd_ray.data.augment import PadCropFlip
from okd_ray.data.base import DataInfo
from okd_ray.data.config import DataConfig
from okd_ray.data.tensor_dataset import InMemory, TensorDataset
from okd_ray.seeding import generator

TRAIN, TEST = 10_000, 2_000


@functools.lru_cache(maxsize=1)
def load() -> InMemory:
    """uint8 3x32x32 images and 100 classes, fixed by a seed of their own, with CIFAR's augmentation."""
    g = generator("synthetic-cifar100")
    images = torch.randint(0, 256, (TRAIN + TEST, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (TRAIN + TEST,), generator=g)
    return InMemory(
        info=DataInfo("synthetic-cifar100", in_channels=3, num_classes=100, image_size=32),
        train_images=images[:TRAIN],
        train_labels=labels[:TRAIN],
        test_images=images[TRAIN:],
        test_labels=labels[TRAIN:],
        max_value=255,
        mean=(0.5, 0.5, 0.5),
        std=(0.29, 0.29, 0.29),
        augmentation=PadCropFlip(4, mode="reflect"),
    )


def build(config: DataConfig, seed: int) -> TensorDataset:
    """Nothing to find or fetch: data.root and data.download are not used."""
    return TensorDataset(load(), config, seed)

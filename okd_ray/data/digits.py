"""scikit-learn's bundled 8x8 digits: the embedded default, needing no download, for first runs and tests."""

from __future__ import annotations

import functools

import numpy as np
import torch

from okd_ray.data.base import DataInfo
from okd_ray.data.config import DataConfig
from okd_ray.data.tensor_dataset import InMemory, TensorDataset


@functools.lru_cache(maxsize=1)
def load() -> InMemory:
    """1797 images with values 0..16; a fixed stratified 80/20 split, normalised with train statistics."""
    # Imported here: scikit-learn costs a second to import and only this data set needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.uint8)[:, None]  # N x 1 x 8 x 8
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    train = torch.from_numpy(x_train)
    pixels = train.double() / 16
    return InMemory(
        info=DataInfo("digits", in_channels=1, num_classes=10, image_size=8),
        train_images=train,
        train_labels=torch.from_numpy(y_train).long(),
        test_images=torch.from_numpy(x_test),
        test_labels=torch.from_numpy(y_test).long(),
        max_value=16,
        mean=(pixels.mean().item(),),
        std=(pixels.std().item(),),
    )


def build(config: DataConfig, seed: int) -> TensorDataset:
    """The digits ship with scikit-learn: data.root and data.download are not used."""
    return TensorDataset(load(), config, seed)

"""The validation split: a seeded, stratified share (or count) of the training images, held out of training."""

from __future__ import annotations

import numpy as np
import torch

from okd_ray.errors import DataError
from okd_ray.seeding import derive_seed


def hold_out(labels: torch.Tensor, validation: float | int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices), each ascending: the same in every process for the same labels,
    share and seed. Stratified, so every class keeps its share in both parts."""
    n = len(labels)
    if not validation:
        return torch.arange(n), torch.arange(0)
    # Imported here: scikit-learn costs a second to import and only a split needs it.
    from sklearn.model_selection import train_test_split

    try:
        train, held = train_test_split(
            np.arange(n),
            test_size=validation,
            stratify=labels.numpy(),
            random_state=derive_seed("validation", seed) % 2**32,
        )
    except ValueError as e:  # too few images for the share, or a class too small to stratify
        raise DataError(
            f"data.validation={validation!r} cannot be held out of {n} training images: {e}. "
            "Give a share between 0 and 1 or a count that leaves every class images on both "
            "sides, or data.validation=0"
        ) from None
    return torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(held))

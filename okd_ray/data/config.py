"""The data section of a config (``data.*``): the data layer owns it, and every data set's builder receives it."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from okd_ray.errors import did_you_mean
from okd_ray.settings import Strict


class DataConfig(Strict):
    name: str = "digits"
    root: str | None = None
    download: bool = False
    batch_size: int = Field(64, ge=1)
    test_batch_size: int = Field(256, ge=1)
    augment: bool = True
    # KDCL's set-up: every member draws its own augmentation of the same images (seeded per member).
    augment_per_member: bool = False
    train_limit: int | None = Field(None, ge=1)  # the first N training images (tiny runs)
    test_limit: int | None = Field(None, ge=1)
    # Held out of the (limited) training images, seeded and stratified, never augmented: a share (0 < f < 1)
    # or a count. Every epoch reports its accuracy beside the test set's; okd-ray tune selects on it.
    validation: int | float = 0
    image_size: int | None = Field(None, ge=1)  # imagefolder's input side (default 224); the others are fixed
    num_workers: int = Field(0, ge=0)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from .registry import DATASETS  # the builders import this module

        if name not in DATASETS:
            raise ValueError(
                f"unknown data set {name!r}; {did_you_mean(name, DATASETS)}"
                f"choose one of: {', '.join(DATASETS)}, or register yours (plugins:)"
            )
        return name

    @field_validator("validation", mode="before")
    @classmethod
    def _share_or_count(cls, value: Any) -> int | float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value < 0
            or (isinstance(value, float) and value >= 1)
        ):
            raise ValueError(f"give a share 0 < f < 1, a whole count of training images, or 0; got {value!r}")
        return value

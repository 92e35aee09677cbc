"""What a run's networks take, recorded with the run (``inputs.json``): the data set's channels, classes and image
size, which build the networks, and its normalisation, which feeds them. A trained model then loads and runs
where the data set is not (a laptop, a serving host), without the data set's files or its reader's imports."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from okd_ray import __version__
from okd_ray.errors import DataError

from .base import DataInfo, Dataset, Normalisation

RECORD = "inputs.json"  # in the run folder


@dataclass(frozen=True)
class ModelInputs:
    """Calling it on pixel values (N×C×H×W or C×H×W, from 0 to ``normalisation.max_value``) gives the normalised
    float32 batch the run's networks take, as the run's data set made its test batches."""

    info: DataInfo
    normalisation: Normalisation | None  # None: the data set (a plugin's) does not say how it normalises
    trained_with: str = __version__  # the okd-ray version that recorded it ("": not recorded)

    @classmethod
    def of(cls, dataset: Dataset) -> ModelInputs:
        return cls(dataset.info, getattr(dataset, "normalisation", None))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ModelInputs:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, raw: dict) -> ModelInputs:
        norm = raw["normalisation"]
        return cls(
            DataInfo(**raw["info"]),
            Normalisation(**{**norm, "mean": tuple(norm["mean"]), "std": tuple(norm["std"])}) if norm else None,
            raw["trained_with"],
        )

    def __call__(self, pixels) -> torch.Tensor:
        pixels = torch.as_tensor(pixels)
        c, size = self.info.in_channels, self.info.image_size
        if pixels.dim() not in (3, 4) or tuple(pixels.shape[-3:]) != (c, size, size):
            resize = self.normalisation.resize if self.normalisation else None
            how = f" (resize the shorter side to {resize}, then centre-crop)" if resize else ""
            raise DataError(
                f"the run's networks take {c}×{size}×{size} images (N×{c}×{size}×{size} batches), got "
                f"shape {tuple(pixels.shape)}{how}"
            )
        return self.normalisation(pixels)

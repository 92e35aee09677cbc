"""Data sets as seeded batch streams: every process that builds one sees the same batches."""

from okd_ray.data.base import DataInfo, Dataset
from okd_ray.data.config import DataConfig
from okd_ray.data.registry import DATASETS, build_dataset, register_dataset

__all__ = ["DATASETS", "DataConfig", "DataInfo", "Dataset", "build_dataset", "register_dataset"]

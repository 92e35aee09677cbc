"""okd-ray: online knowledge distillation (AFD, FFL and baselines) for populations of networks, on Ray."""

import os

__version__ = "0.1.0"

# Ray folds its workers' lines that differ only in words holding digits into one ("[repeated 2x across
# cluster]"), so a silent part's report ("okd-ray: m1:cnn32 has run update() ...", population/watch.py) named one
# part for all. Ray's documented setting, read as Ray is imported: where okd_ray is imported first (the command).
os.environ.setdefault("RAY_DEDUP_LOGS_ALLOW_REGEX", "^okd-ray: ")

API = {
    "load_model": "okd_ray.trained.load",
    "load_transform": "okd_ray.trained.load",
    "load_safetensors": "okd_ray.trained.export",
}


def __getattr__(name: str):
    """``okd_ray.load_model`` and the rest of the API, imported when first used: ``import okd_ray`` (and the command,
    which imports it) stays free of torch."""
    if name not in API:
        raise AttributeError(f"module 'okd_ray' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(API[name]), name)

"""Where data sets live on disk when the config gives no root."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ROOT = Path("~/.cache/okd-ray/data")


def data_root(root: str | os.PathLike[str] | None) -> Path:
    """The given root, else a per-user cache, so `data.download=true` works without a root."""
    return Path(root).expanduser() if root is not None else DEFAULT_ROOT.expanduser()

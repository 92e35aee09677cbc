"""User plugins: modules or .py files that register their own terms and methods with okd-ray."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

from okd_ray.errors import ConfigError


def load_plugins(plugins: list[str]) -> list[str]:
    """Import each plugin once per process; return them with files made absolute (actors and Tune
    trials run in other folders)."""
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"plugins: give a list of module names or .py files, got {plugins!r}")
    return [_load(p) for p in plugins]


def _load(plugin: str) -> str:
    if not plugin.endswith(".py"):
        try:
            importlib.import_module(plugin)
        except ImportError as e:
            raise ConfigError(
                f"plugins: cannot import module {plugin!r} ({e}); give an importable module or a path to a .py file"
            ) from None
        return plugin
    path = Path(plugin).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"plugins: file {plugin!r} not found (looked at {path})")
    name = f"okd_ray_plugin_{path.stem}_{hashlib.blake2b(str(path).encode(), digest_size=4).hexdigest()}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - a plugin's code: any error it raises is one message naming it
            del sys.modules[name]
            line = next(
                (f.lineno for f in reversed(traceback.extract_tb(e.__traceback__)) if f.filename == str(path)), None
            )
            raise ConfigError(f"plugins: {path}{f', line {line}' if line else ''}: {type(e).__name__}: {e}") from None
    return str(path)

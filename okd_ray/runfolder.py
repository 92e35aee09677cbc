"""A run folder holds one run: continuing it (``--resume``, ``--run-dir``) may change how, where and how long
the run computes, never what. Checked before anything is written."""

from __future__ import annotations

from typing import Any

from okd_ray.checkpoint import MANIFEST
from okd_ray.config import TrainConfig, dump_config, override, parse_config
from okd_ray.errors import ConfigError
from okd_ray.storage import RunStore

CONFIG = "config.yaml"
METRICS = "metrics.parquet"

# The keys a continued run may change: its length, its engine and resources, where its data and outputs lie,
# what it logs.
MAY_CHANGE = ("epochs", "engine", "device", "threads", "checkpoint_every", "output_dir", "logging",
              "log_every_steps", "ray", "search",
              "data.root", "data.download", "data.num_workers", "data.test_batch_size")


def check_same_run(store: RunStore, config: TrainConfig) -> None:
    """Raise an error naming the keys when ``store`` holds a run that ``config`` would change beyond MAY_CHANGE."""
    if not store.exists(CONFIG):
        return
    held = parse_config(store.read_text(CONFIG), source=store.path(CONFIG))
    old, new = dotted(held.model_dump(mode="json")), dotted(config.model_dump(mode="json"))
    changed = [key for key in dict.fromkeys([*old, *new])
               if old.get(key, ABSENT) != new.get(key, ABSENT) and not may_change(key)]
    if not changed:
        return
    # keys both configs hold first; a key only one holds (a term of another method, a member more) follows
    direct = [k for k in changed if k in old and k in new]
    changed = direct + [k for k in changed if k not in direct]
    differences = "; ".join(f"{key} is {show(old.get(key, ABSENT))} there, {show(new.get(key, ABSENT))} here"
                            for key in changed[:4]) + ("; ..." if len(changed) > 4 else "")
    exact = direct and all(k in direct or k.startswith("method.terms.") for k in changed)  # terms follow the method
    new_run = (f"okd-ray train {store.uri}/{CONFIG} {' '.join(override(k, new[k]) for k in direct)}"
               if exact else "okd-ray train CONFIG KEY=VALUE ...")
    raise ConfigError(
        f"{store.uri} holds another run ({differences}). A run folder holds one run: continuing it may change only "
        f"{', '.join(MAY_CHANGE)}. To train the changed config, start a new run: {new_run}"
    )


def check_resumable(store: RunStore) -> None:
    """Raise when ``store`` holds finished epochs but no checkpoint: they cannot be continued, and okd-ray
    never overwrites them."""
    if not store.exists(METRICS) or store.exists(MANIFEST):
        return
    epochs = max(store.read_table(METRICS).column("epoch").to_pylist(), default=0)
    config = f"{store.uri}/{CONFIG}" if store.exists(CONFIG) else "CONFIG"
    raise ConfigError(
        f"{store.uri} holds {METRICS} with {epochs} finished epochs but no checkpoint ({MANIFEST} is missing), "
        f"so the run cannot be continued and its epochs are not overwritten. Start it over in a new folder: "
        f"okd-ray train {config} (or delete {store.uri} first)"
    )


def write_config(store: RunStore, config: TrainConfig) -> None:
    store.write_text(CONFIG, dump_config(config))


def may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)


ABSENT = object()


def show(value: Any) -> str:
    return "absent" if value is ABSENT else repr(value)


def dotted(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1]}}`` -> ``{"a.b.0": 1}``: every leaf under its dotted override key."""
    if isinstance(obj, dict) and obj:
        return {k: v for key, value in obj.items() for k, v in dotted(value, f"{prefix}{key}.").items()}
    if isinstance(obj, list) and obj:
        return {k: v for i, value in enumerate(obj) for k, v in dotted(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj}

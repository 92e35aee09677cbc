"""A run folder holds one run: continuing it (``--resume``, ``--run-dir``) may change how, where and how long
the run computes, never what; and its files agree with what the checkpoints' manifest recorded of them (the
config, the finished epochs' metrics). Checked before anything is written."""

from __future__ import annotations

from typing import Any

from okd_ray.checkpoint import MANIFEST, Manifest, read_manifest, record_config
from okd_ray.config import TrainConfig, dump_config, override, parse_config, validate
from okd_ray.errors import CheckpointDamaged, ConfigError, FileDamaged
from okd_ray.metrics import digest
from okd_ray.storage import RunStore

CONFIG = "config.yaml"
METRICS = "metrics.parquet"

# The keys a continued run may change: its length, its engine and resources, where its data and outputs lie,
# what it logs.
MAY_CHANGE = (
    "epochs",
    "engine",
    "device",
    "threads",
    "checkpoint_every",
    "silent_part_s",
    "compile",
    "memory_format",
    "output_dir",
    "logging",
    "log_every_steps",
    "ray",
    "search",
    "data.root",
    "data.download",
    "data.num_workers",
    "data.test_batch_size",
)


def check_same_run(store: RunStore, config: TrainConfig) -> None:
    """Raise an error naming the keys when ``store`` holds a run that ``config`` would change beyond MAY_CHANGE,
    or when its ``config.yaml`` was edited since the run began (the manifest records the config it trains)."""
    manifest = held_manifest(store)
    recorded = validate(manifest.config) if manifest is not None and manifest.config is not None else None
    held = parse_config(store.read_text(CONFIG), source=store.path(CONFIG)) if store.exists(CONFIG) else recorded
    if recorded is not None and held is not recorded:
        check_unedited(store, recorded, held)
    if held is None:
        return
    old, new = dotted(held.model_dump(mode="json")), dotted(config.model_dump(mode="json"))
    changed = changed_keys(old, new)
    if not changed:
        return
    direct = [k for k in changed if k in old and k in new]
    exact = direct and all(k in direct or k.startswith("method.terms.") for k in changed)  # terms follow the method
    new_run = (
        f"okd-ray train {store.uri}/{CONFIG} {' '.join(override(k, new[k]) for k in direct)}"
        if exact
        else "okd-ray train CONFIG KEY=VALUE ..."
    )
    raise ConfigError(
        f"{store.uri} holds another run ({differences(changed, old, new, 'there', 'here')}). A run folder holds one "
        f"run: continuing it may change only {', '.join(MAY_CHANGE)}. To train the changed config, start a new run: "
        f"{new_run}"
    )


def check_unedited(store: RunStore, recorded: TrainConfig, held: TrainConfig) -> None:
    """Raise when ``config.yaml`` (``held``) differs from the config the manifest records beyond MAY_CHANGE."""
    old, new = dotted(recorded.model_dump(mode="json")), dotted(held.model_dump(mode="json"))
    changed = changed_keys(old, new)
    if changed:
        trained = f"in the config the checkpoints were trained with ({MANIFEST})"
        raise ConfigError(
            f"{store.path(CONFIG)} was edited after its run began ({differences(changed, old, new, trained, 'now')}). "
            f"A run folder holds one run: put the values back to continue it, or train the edited config as a new "
            f"run: okd-ray train {store.uri}/{CONFIG}"
        )


def check_resumable(store: RunStore) -> None:
    """Raise when ``store`` holds finished epochs that its checkpoint cannot continue: epochs without a manifest
    (okd-ray never overwrites them), or metrics that are missing, unreadable or not those the manifest records."""
    if not store.exists(MANIFEST):
        if store.exists(METRICS):
            epochs = max(store.read_table(METRICS).column("epoch").to_pylist(), default=0)
            raise ConfigError(
                f"{store.uri} holds {METRICS} with {epochs} finished epochs but no checkpoint ({MANIFEST} is "
                f"missing), so the run cannot be continued and its epochs are not overwritten. Start it over in a "
                f"new folder: okd-ray train {config_path(store)} (or delete {store.uri} first)"
            )
        return
    latest = held_manifest(store).latest
    if latest is None or latest.metrics is None:  # no checkpoint yet, or one that recorded no metrics
        return
    fix = f"; put it back as it was, or {start_over(store)}"
    if not store.exists(METRICS):
        raise FileDamaged(
            store.path(METRICS),
            f"is missing: the checkpoint of epoch {latest.epoch} continues the "
            f"history of epochs 1 to {latest.epoch} it held",
            fix,
        )
    try:
        rows = store.read_table(METRICS).to_pylist()
    except FileDamaged as e:
        raise FileDamaged(e.path, e.problem, fix) from None
    if digest([r for r in rows if r.get("epoch", 0) <= latest.epoch]) != latest.metrics:
        raise FileDamaged(
            store.path(METRICS),
            f"was changed: its rows of epochs 1 to {latest.epoch} are not those {MANIFEST} records (their sha256)",
            fix,
        )


def held_manifest(store: RunStore) -> Manifest | None:
    """The manifest of ``store``; an unreadable one is an error that says how to start over."""
    try:
        return read_manifest(store)
    except CheckpointDamaged as e:
        raise CheckpointDamaged(e.path, e.problem, f"; {start_over(store)}") from None


def start_over(store: RunStore) -> str:
    return f"start the run over with okd-ray train {config_path(store)}"


def config_path(store: RunStore) -> str:
    return f"{store.uri}/{CONFIG}" if store.exists(CONFIG) else "CONFIG"


def write_config(store: RunStore, config: TrainConfig) -> None:
    """``config.yaml``, then the manifest's record of the config, before ``metrics.parquet`` holds a row of it: a
    folder with metrics but no manifest has lost its manifest, never merely not made a checkpoint yet."""
    store.write_text(CONFIG, dump_config(config))
    record_config(store, config.model_dump(mode="json"))


def may_change(key: str, kept: tuple[str, ...] = MAY_CHANGE) -> bool:
    return any(key == k or key.startswith(k + ".") for k in kept)


def changed_keys(old: dict[str, Any], new: dict[str, Any], kept: tuple[str, ...] = MAY_CHANGE) -> list[str]:
    """The dotted keys whose values differ between ``old`` and ``new``, but for those under ``kept``: those both hold
    first, then a key only one holds (a term of another method, a member more)."""
    changed = [
        key
        for key in dict.fromkeys([*old, *new])
        if old.get(key, ABSENT) != new.get(key, ABSENT) and not may_change(key, kept)
    ]
    direct = [k for k in changed if k in old and k in new]
    return direct + [k for k in changed if k not in direct]


def differences(keys: list[str], old: dict[str, Any], new: dict[str, Any], there: str, here: str) -> str:
    """``key is 0.05 there, 0.5 here; ...`` for the first four ``keys``."""
    return "; ".join(
        f"{key} is {show(old.get(key, ABSENT))} {there}, {show(new.get(key, ABSENT))} {here}" for key in keys[:4]
    ) + ("; ..." if len(keys) > 4 else "")


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

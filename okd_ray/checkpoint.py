"""A run's checkpoints: each part writes its own shard, the driver writes a small manifest last.

A checkpoint exists once the manifest lists it. The manifest keeps the newest checkpoint and the one before it,
each shard with the size and sha256 its part wrote, so a resume can tell a damaged shard and fall back one
checkpoint. Shards are state dicts, loaded with ``weights_only=True``. The manifest also records what the
checkpoints continue, so that a resume can tell an edited or lost file of the run folder: the config they were
trained with, and for each checkpoint the sha256 of the metrics rows of its epochs.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, replace

import pyarrow.fs as pafs
import torch

from okd_ray.errors import CheckpointDamaged
from okd_ray.storage import RunStore

FOLDER = "checkpoints"
MANIFEST = f"{FOLDER}/manifest.json"
KEPT = 2  # the newest checkpoint and the one to fall back on


@dataclass(frozen=True)
class Shard:
    """What a part wrote, as it wrote it: the driver records it without reading the file back."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Checkpoint:
    epoch: int  # epochs finished
    elapsed: float  # training seconds so far
    folder: str  # the shards' folder, under the run
    shards: dict[str, Shard | None]  # part key (m0, m1, fused, trunk) -> its shard (None: not recorded)
    metrics: str | None = None  # the sha256 of the metrics rows of epochs 1 to ``epoch`` (None: not recorded)


@dataclass(frozen=True)
class Manifest:
    checkpoints: list[Checkpoint]  # newest first; none before the run's first checkpoint
    config: dict | None = None  # the resolved config the checkpoints were trained with (None: not recorded)

    @property
    def latest(self) -> Checkpoint | None:
        return self.checkpoints[0] if self.checkpoints else None


def shard_folder(epoch: int) -> str:
    return f"{FOLDER}/epoch-{epoch:04d}"


def shard_path(folder: str, part_key: str) -> str:
    return f"{folder}/{part_key}.pt"


def save_shard(store: RunStore, path: str, state: dict) -> Shard:
    """Write one part's state to ``path`` and return its size and digest."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    store.write_bytes(path, data)
    return Shard(len(data), hashlib.sha256(data).hexdigest())


def load_shard(store: RunStore, path: str, shard: Shard | None) -> dict:
    """One part's state from ``path``, checked against the manifest's size and digest before torch reads it
    (``shard`` None: an older okd-ray's manifest recorded none to check against)."""
    if not store.exists(path):
        raise CheckpointDamaged(store.path(path), "is missing")
    data = store.read_bytes(path)
    if shard is not None and len(data) != shard.size:
        raise CheckpointDamaged(store.path(path), f"has {len(data)} bytes where the manifest says {shard.size}")
    if shard is not None and hashlib.sha256(data).hexdigest() != shard.sha256:
        raise CheckpointDamaged(store.path(path), "does not match the sha256 in the manifest")
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def read_manifest(store: RunStore) -> Manifest | None:
    if not store.exists(MANIFEST):
        return None
    try:
        raw = json.loads(store.read_text(MANIFEST))
        if "parts" in raw:  # an older okd-ray's: one checkpoint, its shards' names only
            return Manifest([Checkpoint(raw["epoch"], raw["elapsed"], raw["folder"], dict.fromkeys(raw["parts"]))])
        return Manifest(
            [
                Checkpoint(
                    c["epoch"],
                    c["elapsed"],
                    c["folder"],
                    {k: Shard(**s) if s else None for k, s in c["shards"].items()},
                    c.get("metrics"),
                )
                for c in raw["checkpoints"]
            ],
            raw.get("config"),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointDamaged(store.path(MANIFEST), f"cannot be read ({e})") from None


def write_manifest(store: RunStore, manifest: Manifest) -> None:
    store.write_text(MANIFEST, json.dumps(asdict(manifest), indent=1))


def record_config(store: RunStore, config: dict) -> None:
    """Record ``config`` as the one the run trains with (before its metrics hold a row of it), keeping the
    checkpoints the manifest lists."""
    held = read_manifest(store)
    write_manifest(store, Manifest(held.checkpoints if held else [], config))


def start_from(store: RunStore) -> None:
    """The checkpoints of ``store`` (copied from another run: a Tune trial's exploit) start a new run there: what
    the manifest recorded of the run they came from (its config, its metrics) no longer applies."""
    held = read_manifest(store)
    write_manifest(store, Manifest([replace(c, metrics=None) for c in held.checkpoints]))


def commit(store: RunStore, checkpoint: Checkpoint) -> None:
    """Make ``checkpoint`` (its shards written) the newest, keep the one before it, then drop other shard folders
    (older ones, and any a fallback left behind)."""
    held = read_manifest(store)
    earlier = [c for c in (held.checkpoints if held else []) if c.epoch < checkpoint.epoch]
    kept = [checkpoint, *earlier][:KEPT]
    write_manifest(store, Manifest(kept, held.config if held else None))
    folders = {c.folder.rsplit("/", 1)[-1] for c in kept}
    for info in store.fs.get_file_info(pafs.FileSelector(store.path(FOLDER))):
        if info.type == pafs.FileType.Directory and info.base_name not in folders:
            store.delete(f"{FOLDER}/{info.base_name}")


def load_shards(store: RunStore) -> dict[str, dict]:
    """The whole population's newest state, part key -> state dict (tests and tools; engines load their own)."""
    latest = read_manifest(store).latest
    return {key: load_shard(store, shard_path(latest.folder, key), shard) for key, shard in latest.shards.items()}

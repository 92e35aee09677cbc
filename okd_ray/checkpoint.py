"""A run's checkpoints: each part writes its own shard, the driver writes a small manifest last.

A checkpoint exists once its manifest does: a crash while the shards are written leaves the manifest, and
so the previous checkpoint, as it was. Shards are state dicts, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

from okd_ray.storage import RunStore

FOLDER = "checkpoints"
MANIFEST = f"{FOLDER}/manifest.json"


@dataclass(frozen=True)
class Manifest:
    epoch: int  # epochs finished
    elapsed: float  # training seconds so far
    folder: str  # the shards' folder, under the run
    parts: list[str]  # the shards' names (part keys: m0, m1, fused, trunk)


def shard_folder(epoch: int) -> str:
    return f"{FOLDER}/epoch-{epoch:04d}"


def shard_path(folder: str, part_key: str) -> str:
    return f"{folder}/{part_key}.pt"


def read_manifest(store: RunStore) -> Manifest | None:
    return Manifest(**json.loads(store.read_text(MANIFEST))) if store.exists(MANIFEST) else None


def commit(store: RunStore, manifest: Manifest) -> None:
    """Make the shards in ``manifest.folder`` the run's checkpoint, then drop older shard folders."""
    store.write_text(MANIFEST, json.dumps(asdict(manifest), indent=1))
    for info in store.fs.get_file_info(pafs.FileSelector(store.path(FOLDER))):
        if info.type == pafs.FileType.Directory and info.base_name != manifest.folder.rsplit("/", 1)[-1]:
            store.fs.delete_dir(info.path)


def load_shards(store: RunStore) -> dict[str, dict]:
    """The whole population's state, part key -> state dict (tests and tools; engines load their own)."""
    manifest = read_manifest(store)
    return {key: store.load_torch(shard_path(manifest.folder, key)) for key in manifest.parts}

"""A Tune trial is one whole population run: it reports every epoch and checkpoints through Tune."""

from __future__ import annotations

import math
import tempfile
from typing import Any

import pyarrow.fs as pafs
from ray import tune
from ray.train._internal.session import get_storage

from okd_ray.checkpoint import FOLDER as CHECKPOINTS
from okd_ray.checkpoint import MANIFEST, Checkpoint, read_manifest, start_from
from okd_ray.config import TrainConfig, apply_overrides, validate
from okd_ray.engines import part_bundles
from okd_ray.errors import OkdRayError, TrainingDiverged
from okd_ray.methods import Need
from okd_ray.metrics import TIMINGS
from okd_ray.population import PartId, parts_of
from okd_ray.population.spec import fusion_term
from okd_ray.run import held_rows, train
from okd_ray.runfolder import check_resumable, check_same_run
from okd_ray.storage import RunStore

from .space import params_to_overrides

TRAINABLE_CPUS = 0.1  # the trial's own process only orchestrates when the population lives in actors


def trial_metrics(rows: list[dict], config: TrainConfig) -> dict[str, float]:
    """One epoch's rows as flat Tune metrics: ``m0_val_top1``, ``m0_ring_kl``, ``fused_test_top1``,
    ``mean_val_top1``, ... (every loss term and accuracy of every part, and the members' mean and best)."""
    keys = {p.name: p.key for p in [*parts_of(config), PartId("ensemble"), PartId("teacher")]}
    metrics: dict[str, float] = {"epoch": rows[0]["epoch"]}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and key not in TIMINGS:
                metrics[f"{keys[row['part']]}_{key}"] = value
    for split in splits(config):
        members = [r[f"{split}_top1"] for r in rows if r["kind"] == "member"]
        metrics[f"mean_{split}_top1"] = sum(members) / len(members)
        metrics[f"best_{split}_top1"] = max(members)
    return metrics


def splits(config: TrainConfig) -> list[str]:
    """The evaluation splits a run of ``config`` reports: validation (with ``data.validation``), then test."""
    return ["val", "test"] if config.data.validation else ["test"]


def metric_names(config: TrainConfig) -> list[str]:
    """The metrics a run of ``config`` reports, for checking ``--metric`` before any trial: each part's validation
    and test accuracies and loss terms (from the method's registered terms), and the members' mean and best."""
    method = config.method.method
    fuser = fusion_term(method).fuser if Need.FUSION in method.needs else None
    losses = {"member": method.columns(), "fused": fuser.columns if fuser else (), "ensemble": []}
    accuracies = [f"{split}_top{k}" for split in splits(config) for k in (1, 5)]
    names = []
    for part in parts_of(config):
        if part.kind == "trunk":
            continue
        scored = part.kind != "fused" or fuser.classifies  # OKDDip's attention part classifies nothing
        names += [f"{part.key}_{m}" for m in [*(accuracies + ["train_top1"] if scored else []), *losses[part.kind]]]
    if len(config.members) > 1:
        names += [f"ensemble_{a}" for a in accuracies]
    if Need.GATE in config.method.method.needs:
        names += [f"teacher_{a}" for a in accuracies]
    return names + [f"{kind}_{split}_top1" for split in splits(config) for kind in ("mean", "best")]


def trial_resources(config: TrainConfig, cpus_per_trial: float) -> tune.PlacementGroupFactory:
    """Bundle 0 for the trial itself; with the Ray engine, one per part (members, fusion, trunk)."""
    if config.engine == "local":
        return tune.PlacementGroupFactory([{"CPU": cpus_per_trial}])
    return tune.PlacementGroupFactory(
        [{"CPU": TRAINABLE_CPUS}] + part_bundles(config), strategy=config.ray.placement.upper()
    )


def run_trial(params: dict[str, Any], raw_config: dict[str, Any]) -> None:
    """The Tune function trainable: the base config with this trial's sampled values, run epoch by epoch.

    A trial that diverges ends with its metrics NaN and a ``diverged`` message instead of an error: the same
    values would diverge again, so Tune's retries (meant for lost workers) would only repeat it."""
    config = validate(apply_overrides(raw_config, params_to_overrides(params)))
    # MLflow hears of the trial from Tune's callback (tune/sweep.py), which the trial's run does not repeat
    config = config.model_copy(update={"logging": [name for name in config.logging if name != "mlflow"]})
    store = RunStore(f"{trial_folder()}/run")
    seen = starting_point(store, config, tune.get_checkpoint())

    def report(epoch: int, rows: list[dict], saved: bool) -> None:
        metrics = trial_metrics(rows, config)
        if not saved:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            store.copy_to(CHECKPOINTS, f"{folder}/{CHECKPOINTS}")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    # What the run folder finished after Tune's checkpoint (Tune's state lagged behind a kill) is reported again,
    # not trained again.
    latest, held = read_manifest(store).latest if store.exists(MANIFEST) else None, held_rows(store)
    for epoch in range(seen.epoch + 1 if seen else 1, latest.epoch + 1 if latest else 0):
        report(epoch, [r for r in held if r["epoch"] == epoch], epoch == latest.epoch)
    try:
        train(config, run_dir=store.uri, quiet=True, on_epoch=report)
    except TrainingDiverged as e:
        tune.report({**{name: math.nan for name in metric_names(config)}, "diverged": str(e)})


URI_SCHEMES = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs"}  # pyarrow.fs type names -> URI schemes


def trial_folder() -> str:
    """The trial's folder on the sweep's storage (a local path or a URI). Not ``get_trial_dir()``: that is a
    staging folder of one Tune session, which a resumed sweep never reads again, so every trial would start over."""
    storage = get_storage()
    if isinstance(storage.storage_filesystem, pafs.LocalFileSystem):
        return storage.trial_fs_path
    return f"{URI_SCHEMES[storage.storage_filesystem.type_name]}://{storage.trial_fs_path}"


def starting_point(store: RunStore, config: TrainConfig, restored: tune.Checkpoint | None) -> Checkpoint | None:
    """Make ``store`` hold what this trial goes on from, and return Tune's checkpoint of it (None: Tune has none),
    after which Tune has no results. The trial's own run goes on when Tune's checkpoint is one of its own (a
    resumed sweep, a retry) or Tune has none; else the folder starts over: empty, or from Tune's checkpoint
    (PBT's exploit of a better trial, with new values)."""
    if restored is None:
        if not holds_own_run(store, config, None):
            store.delete()  # whatever an attempt left is redone
        return None
    with restored.as_directory() as folder:
        seen = read_manifest(RunStore(folder)).latest
        if not holds_own_run(store, config, seen):
            store.delete()
            store.copy_from(f"{folder}/{CHECKPOINTS}", CHECKPOINTS)
            start_from(store)
    return seen


def holds_own_run(store: RunStore, config: TrainConfig, seen: Checkpoint | None) -> bool:
    """Whether ``store`` holds this trial's own run (its config, its files intact), with a checkpoint and, if Tune
    holds one (``seen``), that one among its own: then the trial goes on from the folder's newest checkpoint."""
    try:
        manifest = read_manifest(store)
        if manifest is None or manifest.latest is None or (seen is not None and seen not in manifest.checkpoints):
            return False
        check_same_run(store, config)
        check_resumable(store)
    except OkdRayError:
        return False
    return True

"""A Tune trial is one whole population run: it reports every epoch and checkpoints through Tune."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from okd_ray.checkpoint import FOLDER as CHECKPOINTS
from okd_ray.checkpoint import MANIFEST, start_from
from okd_ray.config import TrainConfig, apply_overrides, validate
from okd_ray.engines import part_bundles
from okd_ray.errors import TrainingDiverged
from okd_ray.methods import Need
from okd_ray.metrics import TIMINGS
from okd_ray.population import PartId, parts_of
from okd_ray.population.spec import fusion_term
from okd_ray.run import train
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
    return tune.PlacementGroupFactory([{"CPU": TRAINABLE_CPUS}] + part_bundles(config),
                                      strategy=config.ray.placement.upper())


def run_trial(params: dict[str, Any], raw_config: dict[str, Any]) -> None:
    """The Tune function trainable: the base config with this trial's sampled values, run epoch by epoch.

    A trial that diverges ends with its metrics NaN and a ``diverged`` message instead of an error: the same
    values would diverge again, so Tune's retries (meant for lost workers) would only repeat it."""
    config = validate(apply_overrides(raw_config, params_to_overrides(params)))
    # MLflow hears of the trial from Tune's callback (tune/sweep.py), which the trial's run does not repeat
    config = config.model_copy(update={"logging": [name for name in config.logging if name != "mlflow"]})
    run_dir = Path(tune.get_context().get_trial_dir()) / "run"
    restored = tune.get_checkpoint()
    if restored is None:  # a first start, or a retry before any checkpoint: whatever an attempt left is redone
        shutil.rmtree(run_dir, ignore_errors=True)
    else:  # resume, a retry, or PBT's exploit of a better trial (with new values)
        with restored.as_directory() as folder:
            own = run_dir / MANIFEST
            if not (own.exists() and own.read_text() == (Path(folder) / MANIFEST).read_text()):
                # another trial's checkpoint, or an older one: the run folder starts over from it
                shutil.rmtree(run_dir, ignore_errors=True)
                shutil.copytree(Path(folder) / CHECKPOINTS, run_dir / CHECKPOINTS)
                start_from(RunStore(str(run_dir)))

    def report(epoch: int, rows: list[dict], saved: bool) -> None:
        metrics = trial_metrics(rows, config)
        if not saved:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            shutil.copytree(run_dir / CHECKPOINTS, Path(folder) / CHECKPOINTS)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        train(config, run_dir=str(run_dir), quiet=True, on_epoch=report)
    except TrainingDiverged as e:
        tune.report({**{name: math.nan for name in metric_names(config)}, "diverged": str(e)})

"""A Tune trial is one whole population run: it reports every epoch and checkpoints through Tune."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from okd_ray.config import TrainConfig, apply_overrides, validate
from okd_ray.engines import part_bundles
from okd_ray.run import CHECKPOINT, train

from .space import params_to_overrides

TRAINABLE_CPUS = 0.1  # the trial's own process only orchestrates when the population lives in actors


def part_key(part: str) -> str:
    """``m0:resnet32`` -> ``m0``; ``ensemble`` and ``fused`` stay."""
    return part.split(":", 1)[0]


def trial_metrics(rows: list[dict]) -> dict[str, float]:
    """One epoch's rows as flat Tune metrics: ``m0_test_top1``, ``fused_test_top1``, ``mean_test_top1``, ..."""
    metrics: dict[str, float] = {"epoch": rows[0]["epoch"] + 1}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and key not in ("epoch_seconds", "elapsed_seconds"):
                metrics[f"{part_key(row['part'])}_{key}"] = value
    members = [r["test_top1"] for r in rows if r["kind"] == "member"]
    metrics["mean_test_top1"] = sum(members) / len(members)
    metrics["best_test_top1"] = max(members)
    return metrics


def metric_names(config: TrainConfig) -> list[str]:
    """The test accuracies a run of ``config`` reports, for checking ``--metric`` before any trial."""
    parts = [f"m{k}" for k in range(len(config.members))]
    parts += (["ensemble"] if len(config.members) > 1 else []) + (["fused"] if config.method.spec.fusion else [])
    return [f"{p}_{m}" for p in parts for m in ("test_top1", "test_top5")] + ["mean_test_top1", "best_test_top1"]


def trial_resources(config: TrainConfig, cpus_per_trial: float) -> tune.PlacementGroupFactory:
    """Bundle 0 for the trial itself; with the Ray engine, one per member and one for the fusion."""
    if config.engine == "local":
        return tune.PlacementGroupFactory([{"CPU": cpus_per_trial}])
    return tune.PlacementGroupFactory([{"CPU": TRAINABLE_CPUS}] + part_bundles(config, len(config.members)))


def run_trial(params: dict[str, Any], raw_config: dict[str, Any]) -> None:
    """The Tune function trainable: the base config with this trial's sampled values, run epoch by epoch."""
    config = validate(apply_overrides(raw_config, params_to_overrides(params)))
    run_dir = Path(tune.get_context().get_trial_dir()) / "run"
    restored = tune.get_checkpoint()
    if restored is not None:  # resume, a retry, or PBT's exploit of a better trial
        with restored.as_directory() as folder:
            target = run_dir / CHECKPOINT
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(folder) / Path(CHECKPOINT).name, target)

    def report(epoch: int, rows: list[dict], saved: bool) -> None:
        metrics = trial_metrics(rows)
        if not saved:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            shutil.copy(run_dir / CHECKPOINT, Path(folder) / Path(CHECKPOINT).name)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    train(config, run_dir=str(run_dir), quiet=True, on_epoch=report)

"""``okd-ray tune``: a Ray Tune sweep whose trials are whole population runs.

Optuna's TPE proposes the weights (seeded); ASHA stops weak trials early; PBT instead evolves the weights
during training, exploiting through checkpoints; ``--resume`` continues an interrupted sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pyarrow as pa
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search.optuna import OptunaSearch
from rich.console import Console
from rich.table import Table

from okd_ray.config import TrainConfig, apply_overrides, dump_config, load_yaml, read_raw, validate
from okd_ray.engines import connect, part_bundles
from okd_ray.population import parts_of
from okd_ray.errors import ConfigError
from okd_ray.storage import RunStore

from .space import params_to_overrides, parse_space
from .trial import TRAINABLE_CPUS, metric_names, run_trial, trial_resources


@dataclass
class SweepOptions:
    num_samples: int = 8
    max_concurrent: int | None = None
    scheduler: str = "asha"  # asha | pbt | none
    metrics: list[str] = field(default_factory=lambda: ["mean_test_top1"])
    modes: list[str] = field(default_factory=lambda: ["max"])
    storage_path: str = "runs/tune"
    name: str | None = None
    cpus_per_trial: float = 1.0
    resume: bool = False
    quiet: bool = False


@dataclass
class Sweep:
    """Everything checked before any trial starts."""

    raw_config: dict[str, Any]
    config: TrainConfig
    space: dict[str, Any]
    options: SweepOptions

    @property
    def path(self) -> str:
        return f"{self.options.storage_path.rstrip('/')}/{self.options.name}"


def prepare(raw_config: dict[str, Any], raw_space: Any, options: SweepOptions) -> Sweep:
    config = validate(raw_config)
    space = parse_space(raw_space, raw_config)
    options.name = options.name or config.run_name
    valid = metric_names(config)
    if len(options.modes) == 1 and len(options.metrics) > 1:
        options.modes = options.modes * len(options.metrics)
    for metric in options.metrics:
        if metric not in valid:
            raise ConfigError(f"--metric {metric}: no run of this config reports it; choose from {', '.join(valid)}")
    for mode in options.modes:
        if mode not in ("max", "min"):
            raise ConfigError(f"--mode {mode}: use max or min")
    if len(options.modes) != len(options.metrics):
        raise ConfigError(f"--mode: give one mode, or one per metric ({len(options.metrics)})")
    if len(options.metrics) > 1 and options.scheduler != "none":
        raise ConfigError("several --metric values make a multi-objective search, which ASHA and PBT cannot "
                          "rank; add --scheduler none")
    if options.scheduler not in ("asha", "pbt", "none"):
        raise ConfigError(f"--scheduler {options.scheduler}: use asha, pbt or none")
    return Sweep(raw_config, config, space, options)


def tuner(sweep: Sweep) -> tune.Tuner:
    opts, config = sweep.options, sweep.config
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, raw_config=sweep.raw_config), trial_resources(config, opts.cpus_per_trial)
    )
    run_config = tune.RunConfig(
        name=opts.name, storage_path=_absolute(opts.storage_path),
        failure_config=tune.FailureConfig(max_failures=2),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=4),  # PBT may still need a trial's older one
        verbose=0 if opts.quiet else 1,
    )
    if opts.resume:
        if not tune.Tuner.can_restore(_absolute(sweep.path)):
            raise ConfigError(f"--resume: no sweep to resume at {sweep.path}; check --storage-path and --name")
        return tune.Tuner.restore(_absolute(sweep.path), trainable, resume_unfinished=True, resume_errored=True)
    single = len(opts.metrics) == 1
    metric, mode = (opts.metrics[0], opts.modes[0]) if single else (None, None)
    if opts.scheduler == "pbt":
        # PBT samples its own starting points and mutates them; it takes no searcher. Synchronous: every
        # epoch all trials wait for each other, then the worse half copies a better trial's checkpoint.
        scheduler = PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=1, hyperparam_mutations=sweep.space,
            quantile_fraction=0.5, resample_probability=0.25, synch=True,
        )
        search_alg = None
    else:
        scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=config.epochs, grace_period=1,
                                   reduction_factor=2) if opts.scheduler == "asha" else FIFOScheduler())
        search_alg = OptunaSearch(
            metric=metric if single else opts.metrics, mode=mode if single else opts.modes,
            sampler=optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=max(2, opts.num_samples // 3)),
        )
    return tune.Tuner(
        trainable,
        param_space=sweep.space,
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, search_alg=search_alg, scheduler=scheduler, num_samples=opts.num_samples,
            max_concurrent_trials=opts.max_concurrent,
        ),
        run_config=run_config,
    )


def run_sweep(sweep: Sweep, address: str | None = None) -> list[dict]:
    """Run (or resume) the sweep, then write ``trials.parquet``, ``best_config.yaml`` and print a table."""
    connect(address)
    _resolve_auto_resources(sweep)
    results = tuner(sweep).fit()
    rows = trial_rows(results, sweep)
    store = RunStore(sweep.path)
    store.write_table("trials.parquet", pa.Table.from_pylist(rows))
    best = best_row(rows, sweep)
    if best is not None:
        overrides = params_to_overrides({k.removeprefix("config/"): v for k, v in best.items()
                                         if k.startswith("config/")})
        best_config = validate(apply_overrides(sweep.raw_config, overrides))
        store.write_text("best_config.yaml", dump_config(best_config))
    if not sweep.options.quiet:
        show(rows, sweep, best)
        Console().print(f"sweep folder: {sweep.path} (trials.parquet, best_config.yaml)")
    return rows


def _resolve_auto_resources(sweep: Sweep) -> None:
    """Fix the Ray engine's automatic per-part resources now, so trials ask for what their bundles hold."""
    if sweep.config.engine != "ray":
        return
    bundles = dict(zip((p.kind for p in parts_of(sweep.config)), part_bundles(sweep.config, spare_cpus=TRAINABLE_CPUS)))
    ray_raw = sweep.raw_config.setdefault("ray", {})
    ray_raw.setdefault("num_cpus_per_member", bundles["member"]["CPU"])
    ray_raw.setdefault("num_gpus_per_member", bundles["member"].get("GPU", 0))
    if "fused" in bundles:
        ray_raw.setdefault("num_cpus_fusion", bundles["fused"]["CPU"])
    sweep.config = validate(sweep.raw_config)


def trial_rows(results: tune.ResultGrid, sweep: Sweep) -> list[dict]:
    """One row per trial: its sampled values (``config/...``), final metrics, epochs run and status."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        row = {"trial_id": metrics.get("trial_id") or Path(result.path).name, "path": result.path,
               "status": "error" if result.error else "done",
               "epochs": int(metrics.get("epoch", 0)),
               "stopped_early": int(metrics.get("epoch", 0)) < sweep.config.epochs and not result.error}
        row.update({f"config/{k}": v for k, v in (result.config or {}).items()})
        row.update({k: float(v) for k, v in metrics.items() if _is_metric(k, v)})
        rows.append(row)
    return rows


def _is_metric(key: str, value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and "_" in key and (
        key.startswith(("m", "ensemble_", "fused_", "mean_", "best_")) and not key.startswith("time_"))


def best_row(rows: list[dict], sweep: Sweep) -> dict | None:
    """The best finished trial by the first metric (the first objective of a multi-objective search)."""
    metric, mode = sweep.options.metrics[0], sweep.options.modes[0]
    scored = [r for r in rows if isinstance(r.get(metric), float) and not math.isnan(r[metric])]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r[metric])


def show(rows: list[dict], sweep: Sweep, best: dict | None) -> None:
    metrics = sweep.options.metrics
    keys = sorted({k for r in rows for k in r if k.startswith("config/")})
    table = Table(title=f"sweep {sweep.options.name}: {len(rows)} trials")
    for column in ["trial", *[k.removeprefix("config/") for k in keys], "epochs", *metrics]:
        table.add_column(column, justify="left" if column == "trial" else "right")
    for r in sorted(rows, key=lambda r: r.get(metrics[0], float("nan")), reverse=sweep.options.modes[0] == "max"):
        mark = " *" if r is best else ""
        table.add_row(r["trial_id"] + mark, *[_fmt(r.get(k)) for k in keys], f"{r['epochs']}"
                      + (" (stopped)" if r["stopped_early"] else ""), *[_fmt(r.get(m)) for m in metrics])
    Console().print(table)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def load_sweep_files(config_path: str | None, overrides: list[str], space_path: str | None) -> tuple[dict, Any]:
    """The train config (its ``search:`` mapping taken out) with overrides, and the search space."""
    raw = read_raw(config_path)
    raw_space = raw.pop("search", None)
    if space_path is not None:
        if not Path(space_path).is_file():
            raise ConfigError(f"--space {space_path!r} not found")
        loaded = load_yaml(Path(space_path).read_text(), space_path) or {}
        raw_space = loaded.get("search", loaded) if isinstance(loaded, dict) else loaded
    if raw_space is None:
        raise ConfigError("no search space: add a top-level 'search:' mapping to the config, or give --space FILE")
    return apply_overrides(raw, overrides), raw_space

"""``okd-ray tune``: a Ray Tune sweep whose trials are whole population runs.

Optuna's TPE proposes the weights (seeded); ASHA stops weak trials early; PBT instead evolves the weights
during training, exploiting through checkpoints; ``--resume`` continues an interrupted sweep. All of them
select on a validation split held out of the training images: the test set is for the final report only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from okd_ray.config import TrainConfig, apply_overrides, check_file, dump_config, load_yaml, read_raw, validate
from okd_ray.engines import connect, part_bundles, release_hosts
from okd_ray.errors import ConfigError, Interrupted, NoResult, OkdRayError, Terminated, signal_of
from okd_ray.lock import LOCK, folder_lock
from okd_ray.metrics import union_table
from okd_ray.population import parts_of, plan_population
from okd_ray.report import SEARCH, TEST_SELECTION_WARNING, chosen_test_result, number, rank_trials
from okd_ray.runfolder import MAY_CHANGE, changed_keys, differences, dotted
from okd_ray.storage import RunStore
from okd_ray.terminal import console, fitted_table, short_names, warn
from okd_ray.trackers import check_trackers
from okd_ray.trackers.mlflow import sweep_callback

from .progress import SweepProgress
from .space import params_to_overrides, parse_space
from .trial import TRAINABLE_CPUS, metric_names, run_trial, trial_resources


@dataclass
class SweepOptions:
    num_samples: int = 8
    max_concurrent: int | None = None
    scheduler: str = "asha"  # asha | pbt | none
    metrics: list[str] = field(default_factory=lambda: [DEFAULT_METRIC])
    modes: list[str] = field(default_factory=lambda: ["max"])
    select_on_test: bool = False  # the opt-in to select on a test metric; every report then says so first
    storage_path: str = "runs/tune"
    name: str | None = None
    cpus_per_trial: float = 1.0
    resume: bool = False
    overwrite: bool = False  # replace an earlier sweep of the same name
    quiet: bool = False
    resume_command: str = "okd-ray tune ... --resume"  # what the user types to continue this sweep


@dataclass
class Sweep:
    """Everything checked before any trial starts."""

    raw_config: dict[str, Any]
    raw_space: dict[str, Any]
    config: TrainConfig
    space: dict[str, Any]
    options: SweepOptions

    @property
    def path(self) -> str:
        return f"{self.options.storage_path.rstrip('/')}/{self.options.name}"


DEFAULT_METRIC = "mean_val_top1"
DEFAULT_VALIDATION = 0.1  # the share of training images held out when the config sets no data.validation


def with_validation(raw_config: dict[str, Any]) -> dict[str, Any]:
    """The config with ``data.validation`` set: trials, and so ``best_config.yaml``, hold the split out."""
    data = raw_config.get("data") or {}
    if not isinstance(data, dict) or data.get("validation") is not None:
        return raw_config
    return {**raw_config, "data": {**data, "validation": DEFAULT_VALIDATION}}


def is_test_metric(metric: str) -> bool:
    return "test_top" in metric


def prepare(raw_config: dict[str, Any], raw_space: Any, options: SweepOptions) -> Sweep:
    raw_config = with_validation(raw_config)
    config = validate(raw_config)
    # plugin files as found from here: a trial runs in its own folder (so does best_config.yaml's user)
    raw_config = {**raw_config, "plugins": config.plugins}
    plan_population(config)  # the data set and the population as every trial will build them: errors now, once
    space = parse_space(raw_space, raw_config)
    options.name = options.name or config.run_name
    sweep = Sweep(raw_config, raw_space, config, space, options)
    store = RunStore(sweep.path)
    check_trackers(config, store)
    if options.resume and options.overwrite:
        raise ConfigError("--resume continues the sweep and --overwrite replaces it; give one of them")
    if options.resume:
        held = yaml.safe_load(store.read_text(SEARCH)) if store.exists(SEARCH) else None
        if held is not None:
            check_same_sweep(sweep, held)
        if not tune.Tuner.can_restore(_absolute(sweep.path)):
            if held is None:
                raise ConfigError(f"--resume: no sweep to resume at {sweep.path}; check --storage-path and --name")
            warn(
                f"sweep {sweep.path} stopped before Tune saved its state, before any trial could finish: it starts "
                f"again, as {SEARCH} there says it began"
            )
            options.resume, options.overwrite = False, True
    elif store.exists() and not options.overwrite:
        raise ConfigError(
            f"sweep folder {sweep.path} exists: continue that sweep with --resume, replace it with "
            "--overwrite, or give another --name"
        )
    valid = metric_names(config)
    if len(options.modes) == 1 and len(options.metrics) > 1:
        options.modes = options.modes * len(options.metrics)
    for metric in options.metrics:
        if "_val_" in metric and not config.data.validation:
            raise ConfigError(
                f"--metric {metric}: data.validation=0 holds no images out of training to select on; "
                f"leave data.validation unset (okd-ray tune holds out {DEFAULT_VALIDATION:.0%}) or "
                "give a share, e.g. data.validation=0.1"
            )
        if metric not in valid:
            raise ConfigError(f"--metric {metric}: no run of this config reports it; choose from {', '.join(valid)}")
        if is_test_metric(metric) and not options.select_on_test:
            raise ConfigError(
                f"--metric {metric}: selecting on the test set makes every tuned number optimistic. Select on the "
                f"validation split held out of the training images instead: --metric "
                f"{metric.replace('test_top', 'val_top')} (the default is {DEFAULT_METRIC}); add --select-on-test "
                "only if you mean it, and every report will say so"
            )
    for mode in options.modes:
        if mode not in ("max", "min"):
            raise ConfigError(f"--mode {mode}: use max or min")
    if len(options.modes) != len(options.metrics):
        raise ConfigError(f"--mode: give one mode, or one per metric ({len(options.metrics)})")
    if len(options.metrics) > 1 and options.scheduler != "none":
        raise ConfigError(
            "several --metric values make a multi-objective search, which ASHA and PBT cannot "
            "rank; add --scheduler none"
        )
    if options.scheduler not in ("asha", "pbt", "none"):
        raise ConfigError(f"--scheduler {options.scheduler}: use asha, pbt or none")
    return sweep


def schedulers(sweep: Sweep) -> tuple[TrialScheduler, OptunaSearch | None]:
    """The trial scheduler and the searcher, each told the sweep's metric itself (ASHA stops, PBT exploits and
    Optuna proposes on it)."""
    opts, config = sweep.options, sweep.config
    single = len(opts.metrics) == 1
    metric, mode = (opts.metrics[0], opts.modes[0]) if single else (opts.metrics, opts.modes)
    if opts.scheduler == "pbt":
        # PBT samples its own starting points and mutates them; it takes no searcher. Synchronous: every
        # epoch all trials wait for each other, then the worse half copies a better trial's checkpoint.
        return PopulationBasedTraining(
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            perturbation_interval=1,
            hyperparam_mutations=sweep.space,
            quantile_fraction=0.5,
            resample_probability=0.25,
            synch=True,
        ), None
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            max_t=config.epochs,
            grace_period=1,
            reduction_factor=2,
        )
        if opts.scheduler == "asha"
        else FIFOScheduler()
    )
    return scheduler, OptunaSearch(
        metric=metric,
        mode=mode,
        sampler=optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=max(2, opts.num_samples // 3)),
    )


def tuner(sweep: Sweep) -> tune.Tuner:
    opts, config = sweep.options, sweep.config
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, raw_config=sweep.raw_config),
        trial_resources(config, opts.cpus_per_trial),
    )
    run_config = tune.RunConfig(
        name=opts.name,
        storage_path=_absolute(opts.storage_path),
        # retries are for lost workers and nodes; a diverged trial ends without an error (see run_trial)
        failure_config=tune.FailureConfig(max_failures=2),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=4),  # PBT may still need a trial's older one
        verbose=0,  # okd-ray prints its own lines instead (sweep_callbacks)
        callbacks=sweep_callbacks(sweep),
    )
    if opts.resume:
        return tune.Tuner.restore(_absolute(sweep.path), trainable, resume_unfinished=True, resume_errored=True)
    scheduler, search_alg = schedulers(sweep)
    return tune.Tuner(
        trainable,
        param_space=sweep.space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=opts.num_samples,
            max_concurrent_trials=opts.max_concurrent,
            # a trial's process (with torch and okd_ray imported) runs the next trial of its resources; with
            # engine=ray it keeps its placement group, and so its population's warm hosts, too
            reuse_actors=True,
        ),
        run_config=run_config,
    )


def sweep_callbacks(sweep: Sweep) -> list[tune.Callback]:
    """A line per trial event on the terminal (unless ``--quiet``), and with ``logging: [mlflow]`` Tune's MLflow
    callback."""
    opts = sweep.options
    return ([] if opts.quiet else [SweepProgress(opts.metrics[0], sweep.config.epochs)]) + (
        [sweep_callback(RunStore(sweep.path), opts.name)] if "mlflow" in sweep.config.logging else []
    )


def run_sweep(sweep: Sweep, address: str | None = None) -> list[dict]:
    """Run (or resume) the sweep, then write ``trials.parquet`` and, once every trial has ended and one finished,
    ``best_config.yaml``; print a table. An interrupted sweep, or one where no trial finished, is an error that
    gives the command to continue."""
    store = RunStore(sweep.path)
    with folder_lock(store, warn):
        return run_locked_sweep(sweep, store, address)


def run_locked_sweep(sweep: Sweep, store: RunStore, address: str | None) -> list[dict]:
    """``run_sweep``'s work, the sweep folder held by this process."""
    if sweep.options.overwrite:
        for name in store.names():
            if name != LOCK:
                store.delete(name)
    began = None if store.exists(SEARCH) else yaml.safe_dump(sweep_record(sweep), sort_keys=False)  # as given
    try:
        with ray_output(sweep.options.quiet):
            # trials print nothing of their own (each run is quiet), so their workers' output (Tune's
            # checkpoint lines, workers stopped at the end) stays in Ray's log files
            connect(address, log_to_driver=False)
            release_hosts()  # the trials need the room that this process's warm hosts hold
            if began is not None:  # before any trial: a sweep killed at any moment resumes as it began
                store.write_text(SEARCH, began)
            _resolve_auto_resources(sweep)
            if not sweep.options.quiet:
                console().print(
                    f"sweep {sweep.options.name}: {sweep.options.num_samples} trials of "
                    f"{sweep.config.epochs} epochs into {sweep.path}, selecting on "
                    f"{sweep.options.metrics[0]}; every trial's curves: tensorboard --logdir "
                    f"{_absolute(sweep.path)}",
                    soft_wrap=True,
                )
            with sigterm_as_ctrl_c() as stopped:
                results = tuner(sweep).fit()  # the first Ctrl-C or SIGTERM stops the trials and saves the sweep
    except KeyboardInterrupt as e:  # a second Ctrl-C or SIGTERM, or one before Tune took over
        raise Interrupted(f"sweep interrupted; continue with: {sweep.options.resume_command}", signal_of(e)) from None
    with ray_output(quiet=True):  # each trial's status, read back without repeating Tune's warnings
        trials = tune.ExperimentAnalysis(results.experiment_path, storage_filesystem=results.filesystem).trials
    rows = trial_rows(trials, sweep)
    finished = [r for r in rows if r["status"] in FINISHED]
    best = best_row(finished, sweep)
    for r in rows:
        r["best"] = r is best
    store.write_table("trials.parquet", union_table(rows))
    store.delete("best_config.yaml")  # written below only from this sweep's finished trials
    store.delete("report")  # a report of the sweep before this run is stale
    show(rows, sweep)
    unfinished = sweep.options.num_samples - len(finished) - sum(r["status"] in ENDED for r in rows)
    if unfinished > 0:
        raise Interrupted(
            f"sweep interrupted: {len(finished)} of {sweep.options.num_samples} trials finished; "
            f"continue with: {sweep.options.resume_command}",
            stopped.get("signal", signal.SIGINT),
        )
    if best is None:
        failures = "; ".join(f"{r['trial_id']} {r['status']}: {r['message']}" for r in rows if r["message"])
        retry = any(r["status"] == "error" for r in rows)
        raise NoResult(
            f"no trial of sweep {sweep.path} finished ({failures})"
            + (
                f"; retry the failed trials with: {sweep.options.resume_command}"
                if retry
                else "; make the diverging values less extreme in the search space"
            )
        )
    overrides = params_to_overrides({k.removeprefix("config/"): v for k, v in best.items() if k.startswith("config/")})
    best_config = validate(apply_overrides(sweep.raw_config, overrides))
    store.write_text("best_config.yaml", best_config_header(best, sweep) + dump_config(best_config))
    if not sweep.options.quiet:
        metric = sweep.options.metrics[0]
        result = TEST_SELECTION_WARNING if is_test_metric(metric) else chosen_test_result(best, metric)
        console().print(
            f"sweep folder: {sweep.path}; best_config.yaml is the config of trial {best['trial_id']} "
            f"({metric} {best[metric]:.4g} after {best['epochs']} epochs). {result}",
            soft_wrap=True,
        )
    return rows


def sweep_record(sweep: Sweep) -> dict[str, Any]:
    """What ``search.yaml`` keeps of a sweep, written before its first trial: how it selects (metric, mode: also
    what the report draws each key's axis from), how many trials, the space, the trials' config, and the command
    that continues it."""
    opts = sweep.options
    return {
        "metric": opts.metrics,
        "mode": opts.modes,
        "selected_on": selected_on(opts.metrics),
        "num_samples": opts.num_samples,
        "scheduler": opts.scheduler,
        "search": sweep.raw_space,
        "config": sweep.raw_config,
        "command": opts.resume_command,
    }


OPTIONS = {"metric": "--metric", "mode": "--mode", "num_samples": "--num-samples", "scheduler": "--scheduler"}
SWEEP_MAY_CHANGE = tuple(k for k in MAY_CHANGE if k != "epochs")  # the trials' budget is the sweep's own


def check_same_sweep(sweep: Sweep, held: dict[str, Any]) -> None:
    """``--resume`` goes on with the options, the space and the config the sweep began with (``held``, its
    ``search.yaml``); any other is an error naming them, before any trial: trials run with other values would
    mix two sweeps in one."""
    now = sweep_record(sweep)
    changed = [
        f"{flag} is {held[key]!r} there, {now[key]!r} here"
        for key, flag in OPTIONS.items()
        if key in held and held[key] != now[key]
    ]
    for section, kept in (("search", ()), ("config", SWEEP_MAY_CHANGE)):  # the space's keys, the config's
        if section in held:
            old, new = (
                (held[section], now[section]) if section == "search" else (dotted(held[section]), dotted(now[section]))
            )
            keys = changed_keys(old, new, kept)
            changed += [f"{section}: {differences(keys, old, new, 'there', 'here')}"] if keys else []
    if changed:
        raise ConfigError(
            f"--resume: sweep {sweep.path} began with other values ({'; '.join(changed)}). A sweep goes on as it "
            f"began: continue it with {held.get('command', 'the command that started it, with --resume')}, or "
            "start another sweep with another --name (or replace this one with --overwrite)"
        )


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM (a scheduler's stop, ``ray job stop``) is handed to the SIGINT handler, which during ``fit`` is
    Tune's graceful stop (trials checkpoint, the sweep's state is saved); yields ``{"signal": SIGTERM}`` once one
    came. With Python's own SIGINT handler in place (Tune's first stop restores it), it raises Terminated."""
    stopped: dict[str, int] = {}

    def forward(signum: int, frame) -> None:
        stopped["signal"] = signal.SIGTERM
        handler = signal.getsignal(signal.SIGINT)
        if handler is signal.default_int_handler or not callable(handler):
            raise Terminated.raised()
        handler(signal.SIGINT, frame)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield stopped
    finally:
        signal.signal(signal.SIGTERM, previous)


def selected_on(metrics: list[str]) -> str:
    """``test`` when the (first) metric is a test metric (``--select-on-test``), else ``validation``."""
    return "test" if is_test_metric(metrics[0]) else "validation"


def best_config_header(best: dict, sweep: Sweep) -> str:
    """What chose this config, as YAML comments above it."""
    metric, split = sweep.options.metrics[0], selected_on(sweep.options.metrics)
    held = sweep.config.data.validation
    lines = [
        f"Chosen by okd-ray tune: trial {best['trial_id']} of sweep {sweep.path}, best by {metric} "
        f"({sweep.options.modes[0]}) on the {split} set after {best['epochs']} epochs."
    ]
    if split == "validation":
        lines += [
            f"data.validation={held} keeps the validation images out of training, as in the trials. For a final",
            "model, retrain on every training image with a seed no trial used: data.validation=0 seed=N.",
        ]
    else:
        lines += [TEST_SELECTION_WARNING]
    return "".join(f"# {line}\n" for line in lines)


FINISHED = ("done", "stopped")  # trials whose last result stands: they ran to the end or the scheduler stopped them
ENDED = ("diverged", "error")  # trials that ended without a result


@contextlib.contextmanager
def ray_output(quiet: bool):
    """Nothing of Tune's own output (okd-ray prints a line per trial event, the table and its own commands) or of
    Optuna's notes; with ``quiet``, nothing of Ray's logs either."""
    logging.getLogger("ray.tune.tune").addFilter(_no_restore_hint)
    ray_logger, optuna_verbosity = logging.getLogger("ray"), optuna.logging.get_verbosity()
    ray_level, air_output = ray_logger.level, os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the legacy reporter is silent at verbose=0; the new one is not
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if quiet:
        ray_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        ray_logger.setLevel(ray_level)
        optuna.logging.set_verbosity(optuna_verbosity)
        if air_output is None:
            del os.environ["RAY_AIR_NEW_OUTPUT"]
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = air_output


def _no_restore_hint(record: logging.LogRecord) -> bool:
    return "Tuner.restore(" not in record.getMessage()


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


def trial_rows(trials: list, sweep: Sweep) -> list[dict]:
    """One row per trial: its sampled values (``config/...``), last metrics, epochs run, status and message."""
    rows = []
    for trial in trials:
        result = trial.last_result or {}
        epochs = int(trial.metric_analysis.get("epoch", {}).get("max", 0))
        status, message = trial_status(trial, result, epochs, sweep.config.epochs)
        row = {"trial_id": trial.trial_id, "path": trial.path, "status": status, "epochs": epochs, "message": message}
        row.update({f"config/{k}": v for k, v in (trial.config or {}).items()})
        row.update({k: float(v) for k, v in result.items() if _is_metric(k, v)})
        rows.append(row)
    return rows


def trial_status(trial, result: dict, epochs: int, total: int) -> tuple[str, str]:
    """done | stopped (early, by the scheduler) | diverged | error | unfinished (interrupted or not started),
    and what went wrong, in one line."""
    if trial.status == "ERROR":
        error = trial.get_pickled_error()
        cause = getattr(error, "cause", error)  # a RayTaskError carries the trainable's own error
        if isinstance(cause, OkdRayError):  # its message, built from its fields
            return "error", str(cause)
        lines = [line for line in str(trial.get_error() or "").splitlines() if line.strip()]  # a traceback's text
        return "error", lines[-1].strip() if lines else "failed"
    if trial.status != "TERMINATED":
        return "unfinished", ""
    if "diverged" in result:
        return "diverged", result["diverged"]
    return ("done" if epochs >= total else "stopped"), ""


def _is_metric(key: str, value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and "_" in key
        and (key.startswith(("m", "ensemble_", "fused_", "mean_", "best_")) and not key.startswith("time_"))
    )


def best_row(rows: list[dict], sweep: Sweep) -> dict | None:
    """The best of ``rows`` by the first metric (the first objective of a multi-objective search)."""
    metric = sweep.options.metrics[0]
    ranked = rank_trials(rows, metric, sweep.options.modes[0])
    return ranked[0] if ranked and not math.isnan(number(ranked[0].get(metric))) else None


def show(rows: list[dict], sweep: Sweep) -> None:
    """The table of trials, best first; it is the one thing ``--quiet`` prints on stdout."""
    metrics, keys = sweep.options.metrics, sorted({k for r in rows for k in r if k.startswith("config/")})
    order = rank_trials(rows, metrics[0], sweep.options.modes[0])
    cells = [
        [
            r["trial_id"] + (" *" if r["best"] else ""),
            *[_fmt(r.get(k)) for k in keys],
            str(r["epochs"]),
            r["status"],
            *[_fmt(r.get(m)) for m in metrics],
        ]
        for r in order
    ]
    headers = ["trial", *short_names([k.removeprefix("config/") for k in keys]), "epochs", "status", *metrics]
    title = (
        f"sweep {sweep.options.name}: {len(rows)} trials (* best by {metrics[0]}, on the {selected_on(metrics)} set)"
    )
    if selected_on(metrics) == "test":
        console().print(TEST_SELECTION_WARNING, style="bold red", soft_wrap=True)
    console().print(fitted_table(title, headers, cells, left=("trial", "status")))


def _fmt(value: Any) -> str:
    """Three digits for the screen; trials.parquet holds them all."""
    return "" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def load_sweep_files(config_path: str | None, overrides: list[str], space_path: str | None) -> tuple[dict, Any]:
    """The train config (its ``search:`` mapping taken out) with overrides, and the search space."""
    raw = read_raw(config_path)
    raw_space = raw.pop("search", None)
    if space_path is not None:
        check_file(Path(space_path), f"--space {space_path!r}", "give a YAML file that holds the search space")
        loaded = load_yaml(Path(space_path).read_text(), space_path) or {}
        raw_space = loaded.get("search", loaded) if isinstance(loaded, dict) else loaded
    if raw_space is None:
        raise ConfigError("no search space: add a top-level 'search:' mapping to the config, or give --space FILE")
    return apply_overrides(raw, overrides), raw_space

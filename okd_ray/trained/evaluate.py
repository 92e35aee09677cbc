"""``okd-ray eval``: every part of a run's checkpoint on its test split, or on other data, through the run's own
evaluation (the local engine's parts, ``population_eval``, ``metrics.accuracy``), so that on the run's own data it
gives the run's own numbers, bit for bit."""

from __future__ import annotations

import posixpath

from okd_ray.config import parse_config
from okd_ray.data import DataInfo
from okd_ray.engines.local import LocalEngine
from okd_ray.errors import ConfigError
from okd_ray.metrics import ACCURACY, TIMINGS, union_table
from okd_ray.population import plan_population
from okd_ray.progress import epoch_table
from okd_ray.run import make_rows, merged
from okd_ray.runfolder import CONFIG, METRICS
from okd_ray.storage import RunStore
from okd_ray.terminal import console, warn
from okd_ray.trained.load import find_checkpoint, open_run

EVAL = "eval.parquet"
MAY_OVERRIDE = ("data", "threads", "device")  # what it evaluates on and how; never what was trained


def evaluate_run(
    run_dir: str, overrides: list[str] = (), checkpoint: int | str = "last", out: str | None = None, quiet: bool = False
) -> list[dict]:
    """Rows of every part's validation (where the run held some out) and test accuracies, written to ``out`` (by
    default ``eval.parquet`` in the run folder) and printed; on the run's own data, checked against its
    ``metrics.parquet``."""
    for item in overrides:
        key = item.partition("=")[0]
        if key.split(".")[0] not in MAY_OVERRIDE:
            raise ConfigError(
                f"override {item!r}: okd-ray eval changes only what it evaluates on and how "
                f"({', '.join(k + '.*' if k == 'data' else k for k in MAY_OVERRIDE)}), never the "
                "trained population"
            )
    run = open_run(run_dir)
    found = find_checkpoint(run.store, checkpoint)
    config = parse_config(run.store.read_text(CONFIG), overrides, source=run.store.path(CONFIG))
    plan = plan_population(config)
    if shape(plan.data) != shape(run.inputs.info):
        raise ConfigError(
            f"data.name={config.data.name}: the run's networks take {shape(run.inputs.info)}, that data "
            f"set has {shape(plan.data)}; give data of the run's shape"
        )
    engine = LocalEngine(config, plan)
    try:
        engine.load(run.store, found)
        stats = merged(engine.evaluate(split) for split in plan.eval_splits)
    finally:
        engine.close()
    rows = [
        {**{k: v for k, v in row.items() if k not in TIMINGS}, "data": config.data.name}
        for row in make_rows(config, found.epoch, {}, {}, stats, 0.0, 0.0)
        if "test_top1" in row
    ]
    if out is None:
        run.store.write_table(EVAL, union_table(rows))
    else:
        RunStore(posixpath.dirname(out) or ".").write_table(posixpath.basename(out), union_table(rows))
    if not quiet:
        console().print(
            epoch_table(
                [{k: v for k, v in r.items() if k != "data"} for r in rows],
                f"{run_dir}: checkpoint of epoch {found.epoch} on {config.data.name}",
            )
        )
    if not any(item.startswith("data.") for item in overrides):  # the run's own data: its own numbers
        check_against_run(run.store, rows, found.epoch, config.threads)
    return rows


def shape(info: DataInfo) -> str:
    """What networks built for ``info`` take and give."""
    return f"{info.in_channels}×{info.image_size}×{info.image_size} images of {info.num_classes} classes"


def check_against_run(store: RunStore, rows: list[dict], epoch: int, threads: int | None) -> None:
    """Warn where an accuracy differs from the run's own row of the epoch (another torch thread count can)."""
    if not store.exists(METRICS):
        return
    held = {r["part"]: r for r in store.read_table(METRICS).to_pylist() if r["epoch"] == epoch}
    differ = [
        f"{r['part']} {c} {r[c]} (the run: {held.get(r['part'], {}).get(c)})"
        for r in rows
        for c in ACCURACY
        if c in r and c != "train_top1" and held.get(r["part"], {}).get(c) != r[c]
    ]
    if differ:
        how = (
            f"threads={threads}"
            if threads
            else "threads unset (torch's default here; a run on Ray used its "
            "parts' CPUs): give threads=N as the run computed"
        )
        warn(f"{'; '.join(differ)} differ from {store.path(METRICS)}, epoch {epoch}; evaluated with {how}")

"""What a sweep costs beyond its trials' training: 16 short trials (Optuna TPE + ASHA, the digits), with
engine=local and with engine=ray.

    python experiments/bench_sweep.py
    python experiments/bench_sweep.py --smoke-test

A trial's training time is its run's ``elapsed_seconds`` after the last epoch it ran (its epochs: training,
evaluation, checkpoints); the sweep's wall time adds everything else: Tune's own work, the trials' processes and,
with engine=ray, their populations' actors, Optuna. Trials run one at a time (``--max-concurrent 1``), so the ratio
of the two is that overhead, not two trials sharing the CPUs. Each engine's sweep runs on a Ray instance of its own.
Prints a table and writes Parquet.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray
from bench_scaling import publish  # a sibling: the same table-and-Parquet tail
from rich.table import Table

from okd_ray.engines import connect
from okd_ray.tune import SweepOptions, load_sweep_files, prepare, run_sweep

CONFIG = Path(__file__).parent / "configs" / "tune-digits.yaml"
ON_RAY = ["engine=ray", "threads=1", "ray.num_cpus_per_member=0.5", "ray.num_cpus_fusion=0.5"]


def sweep_row(engine: str, samples: int, epochs: int, folder: str) -> dict:
    """One sweep of ``samples`` trials on a Ray instance started for it: its wall time against its trials'."""
    overrides = [f"epochs={epochs}", "threads=1", *(ON_RAY if engine == "ray" else [])]
    raw, space = load_sweep_files(str(CONFIG), overrides, None)
    options = SweepOptions(
        num_samples=samples, max_concurrent=1, scheduler="asha", storage_path=folder, name=engine, quiet=True
    )
    connect(None, log_to_driver=False)
    try:
        started = time.perf_counter()
        rows = run_sweep(prepare(raw, space, options))
        wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    training = [
        max(pq.read_table(Path(r["path"]) / "run" / "metrics.parquet").column("elapsed_seconds").to_pylist())
        for r in rows
    ]
    return {
        "engine": engine,
        "trials": len(rows),
        "epochs_run": sum(r["epochs"] for r in rows),
        "wall_s": wall,
        "training_s": sum(training),
        "wall_over_training": wall / sum(training),
        "overhead_per_trial_s": (wall - sum(training)) / len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4, help="ASHA's max_t; trials it stops run fewer")
    parser.add_argument("--engines", nargs="+", default=["local", "ray"])
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_sweep.parquet"))
    args = parser.parse_args()
    if args.smoke_test:
        args.samples, args.epochs = 2, 1
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for engine in args.engines:
            rows.append(sweep_row(engine, args.samples, args.epochs, folder))
            print(rows[-1], flush=True)
    table = Table(
        title=f"a sweep of {args.samples} trials (ASHA, up to {args.epochs} epochs, digits, one trial at a "
        "time): wall time over the trials' training time"
    )
    for c in ["engine", "trials", "epochs run", "wall s", "training s", "wall / training", "overhead s per trial"]:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(
            r["engine"],
            str(r["trials"]),
            str(r["epochs_run"]),
            f"{r['wall_s']:.1f}",
            f"{r['training_s']:.1f}",
            f"{r['wall_over_training']:.2f}",
            f"{r['overhead_per_trial_s']:.2f}",
        )
    publish(table, rows, args.out)


if __name__ == "__main__":
    main()

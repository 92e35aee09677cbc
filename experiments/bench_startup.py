"""Start-up against population size K: cold (new actors), with and without Ray's workers preloading torch, and
warm (the actors a population before it left).

    python experiments/bench_startup.py
    python experiments/bench_startup.py --smoke-test

Start-up is the seconds from asking for a population (``RayEngine``) to its first step being possible: its
resources reserved, its actors started and its parts built in them. Ray's workers preload torch when
``RAY_preload_python_modules`` is ``torch`` as their raylet starts (what okd-ray sets when it starts Ray itself).
A worker imports what it preloads after it has registered, so the import only saves time where a worker was
started before it was needed. Each cold measurement therefore runs on a Ray instance of its own, in two states:
``fresh`` (the population is asked for at once, as ``okd-ray train`` does) and ``idle`` (after --idle-s seconds, as
on a cluster that was started earlier: ``ray start``, ``ray up``). ``warm`` is the next population the same process
asks for once the fresh one (with the preload) has ended: it builds its parts in the hosts that one left (a
notebook's next run, a test module's, a sweep's next trial). Prints a table and writes Parquet.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import ray
from bench_scaling import on_ray, population, publish  # a sibling: the same populations as the scaling benchmark
from rich.table import Table

from okd_ray.config import load_config
from okd_ray.engines.ray import RayEngine
from okd_ray.engines.resources import PRELOAD
from okd_ray.population import plan_population


def startup_s(k: int, preload: bool, idle_s: float, arch: str, warm: bool) -> list[float]:
    """A population's start-up on a Ray instance started for it, with or without the preload; with ``warm``, then
    the start-up of the next population of the same process (in the hosts the first one left)."""
    if preload:
        os.environ[PRELOAD] = "torch"
    else:
        os.environ.pop(PRELOAD, None)
    ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        time.sleep(idle_s)
        config = load_config(
            None, on_ray(population(k, arch, 64, 1), "object_store", k, ray.cluster_resources()["CPU"])
        )
        plan = plan_population(config)
        times = []
        for _ in range(2 if warm else 1):
            started = time.perf_counter()
            RayEngine(config, plan).close()
            times.append(time.perf_counter() - started)
        return times
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 8, 16])
    parser.add_argument("--arch", default="cnn16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--idle-s", type=float, default=15.0, help="how long the idle instance waits first")
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_startup.parquet"))
    args = parser.parse_args()
    if args.smoke_test:
        args.sizes, args.repeats, args.idle_s = [2], 1, 5.0
    rows = []

    def row(k: int, state: str, preload: bool, repeat: int, seconds: float) -> None:
        rows.append(
            {
                "members": k,
                "parts": k + 1,
                "state": state,
                "preload": preload,
                "repeat": repeat,
                "startup_s": seconds,
                "per_part_s": seconds / (k + 1),
                "cpus": os.cpu_count(),
            }
        )
        print(rows[-1], flush=True)

    for repeat in range(args.repeats):  # every setting side by side in every repeat
        for k in args.sizes:
            for state, idle in [("fresh", 0.0), ("idle", args.idle_s)]:
                for preload in [False, True]:
                    warm = state == "fresh" and preload
                    times = startup_s(k, preload, idle, args.arch, warm)
                    row(k, state, preload, repeat, times[0])
                    if warm:
                        row(k, "warm", preload, repeat, times[1])
    table = Table(
        title=f"start-up: afd+ffl, {args.arch} members and the fusion, object_store, median of "
        f"{args.repeats}; seconds (per part)"
    )
    for c in ["K", "fresh", "fresh, preload", "idle", "idle, preload", "warm", "fresh, preload / warm"]:
        table.add_column(c, justify="right")
    for k in args.sizes:
        cells = [
            statistics.median(r["startup_s"] for r in rows if (r["members"], r["state"], r["preload"]) == (k, s, p))
            for s, p in [("fresh", False), ("fresh", True), ("idle", False), ("idle", True), ("warm", True)]
        ]
        table.add_row(str(k), *(f"{c:.2f} ({c / (k + 1):.2f})" for c in cells), f"{cells[1] / cells[4]:.0f}x")
    publish(table, rows, args.out)


if __name__ == "__main__":
    main()

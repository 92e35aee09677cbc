"""Start-up against population size K, with and without Ray's workers preloading torch.

    python experiments/bench_startup.py
    python experiments/bench_startup.py --smoke-test

Start-up is the seconds from asking for a population (``RayEngine``) to its first step being possible: its
resources reserved, its actors started and built. Ray's workers preload torch when ``RAY_preload_python_modules``
is ``torch`` as their raylet starts (what okd-ray sets when it starts Ray itself). A worker imports what it
preloads after it has registered, so the import only saves time where a worker was started before it was
needed. Each measurement therefore runs on a Ray instance of its own, in two states: ``fresh`` (the population
is asked for at once, as ``okd-ray train`` does) and ``idle`` (after --idle-s seconds, as on a cluster that was
started earlier: ``ray start``, ``ray up``, a sweep's later trials). Prints a table and writes Parquet.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import ray
from rich.table import Table

from okd_ray.config import load_config
from okd_ray.engines.ray import RayEngine
from okd_ray.engines.resources import PRELOAD
from okd_ray.population import plan_population

from bench_scaling import on_ray, population, publish  # a sibling: the same populations as the scaling benchmark


def startup_s(k: int, preload: bool, idle_s: float, arch: str) -> float:
    """One population's start-up on a Ray instance started for it, with or without the preload."""
    if preload:
        os.environ[PRELOAD] = "torch"
    else:
        os.environ.pop(PRELOAD, None)
    ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        time.sleep(idle_s)
        config = load_config(None, on_ray(population(k, arch, 64, 1), "object_store", k,
                                          ray.cluster_resources()["CPU"]))
        plan = plan_population(config)
        started = time.perf_counter()
        RayEngine(config, plan).close()
        return time.perf_counter() - started
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 16])
    parser.add_argument("--arch", default="cnn16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--idle-s", type=float, default=15.0, help="how long the idle instance waits first")
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_startup.parquet"))
    args = parser.parse_args()
    if args.smoke_test:
        args.sizes, args.repeats, args.idle_s = [2], 1, 5.0
    rows = []
    for repeat in range(args.repeats):  # the four settings side by side in every repeat
        for k in args.sizes:
            for state, idle in [("fresh", 0.0), ("idle", args.idle_s)]:
                for preload in [False, True]:
                    rows.append({"members": k, "state": state, "preload": preload, "repeat": repeat,
                                 "startup_s": startup_s(k, preload, idle, args.arch), "cpus": os.cpu_count()})
                    print(rows[-1], flush=True)
    table = Table(title=f"start-up: afd+ffl, {args.arch} members, object_store, median of {args.repeats}")
    for c in ["K", "state", "no preload s", "preload s", "preload / none"]:
        table.add_column(c, justify="right")
    for k in args.sizes:
        for state in ["fresh", "idle"]:
            off, on = (statistics.median(r["startup_s"] for r in rows
                                         if (r["members"], r["state"], r["preload"]) == (k, state, p))
                       for p in (False, True))
            table.add_row(str(k), state, f"{off:.1f}", f"{on:.1f}", f"{on / off:.2f}")
    publish(table, rows, args.out)


if __name__ == "__main__":
    main()

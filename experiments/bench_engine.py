"""Step time of one population on the local engine and on the Ray engine with each transport, side by side.

    python experiments/bench_engine.py                       # ResNet-20 pair (AFD) and 3x ResNet-20 FFL, batch 128
    python experiments/bench_engine.py --device cuda         # the same on GPUs (a share of one GPU each if few)
    python experiments/bench_engine.py --smoke-test          # a few steps of small CNNs, to check the script

Prints a table and writes experiments/results/bench_engine.parquet. Per engine: the median step time (time
between consecutive steps' completions, the driver submitting ahead), images per second through the
population, and for Ray the exchange overhead: median step time over the median critical-path compute time
measured inside the actors (max over members of forward + fusion step + max over members of update), and
every engine's step time over the local engine's, measured in the same run. A transport that fails to start
or to run (say, NCCL with two parts on one GPU) gets a row with its error instead of times.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from rich.console import Console
from rich.table import Table

from okd_ray.config import load_config
from okd_ray.engines.local import LocalEngine
from okd_ray.engines.ray import RayEngine
from okd_ray.population import plan_population

POPULATIONS = {
    "resnet20 pair, afd": ["method.name=afd", "members=[{arch: resnet20}, {arch: resnet20}]"],
    "3x resnet20, ffl": ["method.name=ffl", "members=[{arch: resnet20}, {arch: resnet20}, {arch: resnet20}]"],
}
SMOKE = {"cnn16 pair, afd+ffl": ["method.name=afd+ffl", "members=[{arch: cnn16}, {arch: cnn16}]"]}


def step_times(engine, steps: int, device: str) -> list[float]:
    """Seconds between consecutive step completions over one epoch of ``steps`` batches. The parts read nothing
    from a GPU within an epoch, so a local step on a GPU ends when its kernels are queued: here it waits for them
    (the Ray parts do so in their profiled calls)."""
    engine.begin_epoch(0)
    done = [time.perf_counter()]
    wait = torch.cuda.synchronize if device == "cuda" and isinstance(engine, LocalEngine) else lambda: None
    engine.train_epoch(steps, lambda: (wait(), done.append(time.perf_counter())))
    return [b - a for a, b in zip(done, done[1:])]


def measure(config, engine_name: str, total: int, warmup: int) -> dict:
    """Median step and compute times of one engine over ``total`` steps, the first ``warmup`` dropped."""
    plan = plan_population(config)
    engine = LocalEngine(config, plan) if engine_name == "local" else RayEngine(config, plan, profile=True)
    try:
        times = step_times(engine, total, config.device)[warmup:]
        if engine_name == "local":
            compute = times
        else:
            busy = ray.get([a.compute_seconds.remote() for a in engine.actors])
            compute = critical_path(busy, len(config.members))[warmup:]
    finally:
        engine.close()
    step, work = statistics.median(times), statistics.median(compute)
    return {"steps": len(times), "median_step_ms": 1000 * step, "images_per_s": config.data.batch_size / step,
            "median_compute_ms": 1000 * work, "exchange_overhead": step / work - 1.0}


def critical_path(busy: list[dict[str, list[float]]], members: int) -> list[float]:
    """Per step: the slowest member's forward, the fusion's step, the slowest member's update."""
    forward = [max(b["forward"][s] for b in busy[:members]) for s in range(len(busy[0]["forward"]))]
    update = [max(b["update"][s] for b in busy[:members]) for s in range(len(busy[0]["update"]))]
    fusion = busy[members]["step"] if len(busy) > members else [0.0] * len(forward)
    return [f + s + u for f, s, u in zip(forward, fusion, update)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="measured steps per engine")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped before measuring")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--transports", nargs="+", default=["object_store", "compiled", "direct"])
    parser.add_argument("--address", default=None, help="Ray cluster to join; default: start a local one")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--smoke-test", action="store_true", help="a few steps of small members")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_engine.parquet"))
    args = parser.parse_args()
    populations = SMOKE if args.smoke_test else POPULATIONS
    if args.smoke_test:
        args.steps, args.warmup = 4, 1
    ray.init(address=args.address, include_dashboard=False, configure_logging=False, log_to_driver=False)
    total = args.steps + args.warmup
    resources = ray.cluster_resources()
    rows = []
    for name, overrides in populations.items():
        base = [
            "data.name=synthetic-cifar100", f"data.batch_size={args.batch_size}", "data.test_limit=128",
            f"data.train_limit={args.batch_size * total}", "epochs=1", f"device={args.device}", *overrides,
        ]
        local_step = None
        for engine_name in ["local", *args.transports]:
            extra = [] if engine_name == "local" else ["engine=ray", f"ray.transport={engine_name}"]
            if engine_name != "local" and args.device == "cuda":  # every part a GPU, or an equal share of them
                parts = len(load_config(None, base).members) + ("ffl" in name)
                share = min(1.0, resources.get("GPU", 0) / parts)
                extra += [f"ray.num_gpus_per_member={share:g}", f"ray.num_gpus_fusion={share:g}"]
            config = load_config(None, base + extra)
            row = {"population": name, "engine": engine_name, "members": len(config.members),
                   "batch_size": args.batch_size, "device": args.device, "cpus": resources.get("CPU", 0),
                   "gpus": resources.get("GPU", 0), "error": None}
            try:
                row.update(measure(config, engine_name, total, args.warmup))
            except Exception as e:  # noqa: BLE001 - recorded: which transports run on this machine is a result
                row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            if engine_name == "local":
                local_step = row.get("median_step_ms")
            if row.get("median_step_ms") and local_step:
                row["step_vs_local"] = row["median_step_ms"] / local_step
            rows.append(row)
            print(rows[-1], flush=True)
    show(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), args.out)
    print(f"wrote {args.out}")


def show(rows: list[dict]) -> None:
    table = Table(title="population step, medians")
    for column in ["population", "engine", "step ms", "images/s", "compute ms", "overhead", "step / local"]:
        table.add_column(column, justify="left" if column in ("population", "engine") else "right")
    for r in rows:
        if r["error"]:
            table.add_row(r["population"], r["engine"], f"failed: {r['error'][:60]}", "", "", "", "")
            continue
        overhead = "" if r["engine"] == "local" else f"{100 * r['exchange_overhead']:+.1f} %"
        ratio = f"{r['step_vs_local']:.2f}" if r.get("step_vs_local") else ""
        table.add_row(r["population"], r["engine"], f"{r['median_step_ms']:.1f}", f"{r['images_per_s']:.0f}",
                      f"{r['median_compute_ms']:.1f}", overhead, ratio)
    Console(width=120).print(table)


if __name__ == "__main__":
    main()

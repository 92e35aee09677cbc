"""Step time of one population on the local engine and on the Ray engine with each transport, side by side.

    python experiments/bench_engine.py                       # ResNet-20 pair (AFD) and 3x ResNet-20 FFL, batch 128
    python experiments/bench_engine.py --device cuda         # the same on GPUs (a share of one GPU each if few)
    python experiments/bench_engine.py --device cuda --precision fp32 bf16   # each population in both precisions
    python experiments/bench_engine.py --smoke-test          # a few steps of small CNNs, to check the script

Prints a table and writes experiments/results/bench_engine.parquet. Per engine: the mean step time (a call of
``--steps`` steps after ``--warmup``, timed whole, the driver submitting ahead), images per second through the
population, and for Ray the exchange overhead: the step time over the median critical-path compute time
measured inside the actors (max over members of forward + fusion step + max over members of update; not for
``collective``, whose parts run whole epochs), and every engine's step time over the local engine's, measured in
the same run. A transport that fails to start
or to run (say, NCCL with two parts on one GPU) gets a row with its error instead of times. ``direct`` uses the
backend the parts' devices call for (gloo, NCCL, or CUDA IPC where they share a GPU); its row names it.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from rich.console import Console
from rich.table import Table

from okd_ray.config import load_config
from okd_ray.engines.local import LocalEngine
from okd_ray.engines import part_bundles
from okd_ray.engines.ray import RayEngine
from okd_ray.engines.ray.direct import backend
from okd_ray.population import plan_population

POPULATIONS = {
    "resnet20 pair, afd": ["method.name=afd", "members=[{arch: resnet20}, {arch: resnet20}]"],
    "3x resnet20, ffl": ["method.name=ffl", "members=[{arch: resnet20}, {arch: resnet20}, {arch: resnet20}]"],
}
SMOKE = {"cnn16 pair, afd+ffl": ["method.name=afd+ffl", "members=[{arch: cnn16}, {arch: cnn16}]"]}


def measure(config, engine_name: str, steps: int, warmup: int) -> dict:
    """One engine's mean step time over ``steps`` steps after ``warmup`` (a call each, timed whole: a call ends
    with every part reading its epoch's values, so every device's work is in it), and for Ray the median
    critical-path compute per step, where the driver makes every call (``collective``'s parts run whole epochs)."""
    plan = plan_population(config)
    engine = LocalEngine(config, plan) if engine_name == "local" else RayEngine(config, plan, profile=True)
    try:
        engine.begin_epoch(0)
        engine.train_epoch(warmup, lambda: None)
        if engine_name != "local":
            ray.get([a.compute_seconds.remote() for a in engine.actors])  # the warm-up's: dropped
        started = time.perf_counter()
        engine.train_epoch(steps, lambda: None)
        step = (time.perf_counter() - started) / steps
        work = step
        if engine_name != "local":
            busy = ray.get([a.compute_seconds.remote() for a in engine.actors])
            work = statistics.median(critical_path(busy, len(config.members))) if "forward" in busy[0] else None
    finally:
        engine.close()
    return {"steps": steps, "step_ms": 1000 * step, "images_per_s": config.data.batch_size / step,
            "compute_ms": 1000 * work if work else None, "exchange_overhead": step / work - 1.0 if work else None}


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
    parser.add_argument("--transports", nargs="+", default=["object_store", "compiled", "direct", "collective"])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
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
    for (name, overrides), precision in itertools.product(populations.items(), args.precision):
        base = [
            "data.name=synthetic-cifar100", f"data.batch_size={args.batch_size}", "data.test_limit=128",
            f"data.train_limit={args.batch_size * total}", "epochs=1", f"device={args.device}",
            f"precision={precision}", *overrides,
        ]
        local_step = None
        for engine_name in ["local", *args.transports]:
            extra = [] if engine_name == "local" else ["engine=ray", f"ray.transport={engine_name}"]
            if engine_name != "local" and args.device == "cuda":  # every part a GPU, or an equal share of them
                parts = len(load_config(None, base).members) + ("ffl" in name)
                share = min(1.0, resources.get("GPU", 0) / parts)
                extra += [f"ray.num_gpus_per_member={share:g}", f"ray.num_gpus_fusion={share:g}"]
            config = load_config(None, base + extra)
            label = f"direct ({backend(part_bundles(config))})" if engine_name == "direct" else engine_name
            row = {"population": name, "precision": precision, "engine": label, "members": len(config.members),
                   "batch_size": args.batch_size, "device": args.device, "cpus": resources.get("CPU", 0),
                   "gpus": resources.get("GPU", 0), "error": None}
            try:
                row.update(measure(config, engine_name, args.steps, args.warmup))
            except Exception as e:  # noqa: BLE001 - recorded: which transports run on this machine is a result
                row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            if engine_name == "local":
                local_step = row.get("step_ms")
            if row.get("step_ms") and local_step:
                row["step_vs_local"] = row["step_ms"] / local_step
            rows.append(row)
            print(rows[-1], flush=True)
    show(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), args.out)
    print(f"wrote {args.out}")


def show(rows: list[dict]) -> None:
    table = Table(title="population step: mean step, median critical-path compute")
    for column in ["population", "precision", "engine", "step ms", "images/s", "compute ms", "overhead",
                   "step / local"]:
        table.add_column(column, justify="left" if column in ("population", "precision", "engine") else "right")
    for r in rows:
        if r["error"]:
            table.add_row(r["population"], r["precision"], r["engine"], f"failed: {r['error'][:60]}", "", "", "", "")
            continue
        overhead = "" if r["exchange_overhead"] is None or r["engine"] == "local" else f"{100 * r['exchange_overhead']:+.1f} %"
        compute = "" if r["compute_ms"] is None else f"{r['compute_ms']:.1f}"
        ratio = f"{r['step_vs_local']:.2f}" if r.get("step_vs_local") else ""
        table.add_row(r["population"], r["precision"], r["engine"], f"{r['step_ms']:.1f}", f"{r['images_per_s']:.0f}",
                      compute, overhead, ratio)
    Console(width=120).print(table)


if __name__ == "__main__":
    main()

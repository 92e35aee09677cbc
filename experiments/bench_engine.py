"""Step time of one population on the local engine and on the Ray engine with each transport, side by side.

    python experiments/bench_engine.py                       # ResNet-20 pair (AFD) and 3x ResNet-20 FFL, batch 128
    python experiments/bench_engine.py --device cuda         # the same on GPUs (a share of one GPU each if few)
    python experiments/bench_engine.py --device cuda --precision fp32 bf16   # each population in both precisions
    python experiments/bench_engine.py --modes eager compiled --transports collective   # torch.compile'd too
    python experiments/bench_engine.py --memory-format channels_last --optimizer-implementation for-loop
    python experiments/bench_engine.py --smoke-test          # a few steps of small CNNs, to check the script

Prints a table and writes experiments/results/bench_engine.parquet. Per engine: the mean step time (a call of
``--steps`` steps after ``--warmup``, timed whole, the driver submitting ahead), images per second through the
population, and for Ray the exchange overhead: the step time over the median critical-path compute time
measured inside the actors (max over members of forward + fusion step + max over members of update; not for
``collective``, whose parts run whole epochs), and every engine's step time over the local engine's, measured in
the same run. Beside the engines, ``plain``: the method as one single-process PyTorch step function (plain_loops.py),
a researcher's own script, in the same mode (eager or compiled), memory format and optimizers. A transport that
fails to start
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
from plain_loops import measure_plain
from rich.console import Console
from rich.table import Table

from okd_ray.config import load_config
from okd_ray.engines import part_bundles
from okd_ray.engines.local import LocalEngine
from okd_ray.engines.ray import RayEngine
from okd_ray.engines.ray.direct import backend
from okd_ray.population import plan_population

POPULATIONS = {
    "resnet20 pair, afd": ["method.name=afd", "members=[{arch: resnet20}, {arch: resnet20}]"],
    "3x resnet20, ffl": ["method.name=ffl", "members=[{arch: resnet20}, {arch: resnet20}, {arch: resnet20}]"],
}
SMOKE = {
    "cnn16 pair, afd": ["method.name=afd", "members=[{arch: cnn16}, {arch: cnn16}]"],
    "3x cnn16, ffl": ["method.name=ffl", "members=[{arch: cnn16}, {arch: cnn16}, {arch: cnn16}]"],
}
MODES = {"eager": "compile=false", "compiled": "compile=true"}


def measure(config, engine_name: str, steps: int, warmup: int) -> dict:
    """One engine's mean step time over ``steps`` steps after ``warmup`` (a call each, timed whole: a call ends
    with every part reading its epoch's values, so every device's work is in it), and for Ray the median
    critical-path compute per step, where the driver makes every call (``collective``'s parts run whole epochs)."""
    if engine_name == "plain":
        return {**measure_plain(config, steps, warmup), "compute_ms": None, "exchange_overhead": None}
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
    return {
        "steps": steps,
        "step_ms": 1000 * step,
        "images_per_s": config.data.batch_size / step,
        "compute_ms": 1000 * work if work else None,
        "exchange_overhead": step / work - 1.0 if work else None,
    }


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
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=list(MODES), help="eager, torch.compile'd")
    parser.add_argument("--memory-format", nargs="+", default=["contiguous"], choices=["contiguous", "channels_last"])
    parser.add_argument("--optimizer-implementation", default="auto", choices=["auto", "for-loop", "foreach", "fused"])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads everywhere (default: torch's locally, the part's CPUs on Ray)",
    )
    parser.add_argument("--no-plain", action="store_true", help="leave out the plain single-process loop")
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
    implementation = args.optimizer_implementation
    for (name, overrides), precision, memory_format, mode in itertools.product(
        populations.items(), args.precision, args.memory_format, args.modes
    ):
        base = [
            "data.name=synthetic-cifar100",
            f"data.batch_size={args.batch_size}",
            "data.test_limit=128",
            f"data.train_limit={args.batch_size * total}",
            "data.validation=0",
            "epochs=1",
            f"device={args.device}",
            f"precision={precision}",
            f"memory_format={memory_format}",
            MODES[mode],
            *overrides,
            *([f"threads={args.threads}"] if args.threads else []),
            *(
                f"members.{i}.optimizer.implementation={implementation}"
                for i in range(len(load_config(None, overrides).members))
            ),
            f"method.feature_update.optimizer.implementation={implementation}",
        ]
        for engine_name in [*([] if args.no_plain else ["plain"]), "local", *args.transports]:
            extra = [] if engine_name in ("local", "plain") else ["engine=ray", f"ray.transport={engine_name}"]
            if extra and args.device == "cuda":  # every part a GPU, or an equal share of them
                parts = len(load_config(None, base).members) + ("ffl" in name)
                share = min(1.0, resources.get("GPU", 0) / parts)
                extra += [f"ray.num_gpus_per_member={share:g}", f"ray.num_gpus_fusion={share:g}"]
            config = load_config(None, base + extra)
            label = f"direct ({backend(part_bundles(config))})" if engine_name == "direct" else engine_name
            row = {
                "population": name,
                "precision": precision,
                "mode": mode,
                "memory_format": memory_format,
                "optimizer_implementation": implementation,
                "engine": label,
                "members": len(config.members),
                "batch_size": args.batch_size,
                "device": args.device,
                "cpus": resources.get("CPU", 0),
                "gpus": resources.get("GPU", 0),
                "error": None,
                **dict.fromkeys(["steps", "step_ms", "images_per_s", "compute_ms", "exchange_overhead"]),
            }
            try:
                row.update(measure(config, engine_name, args.steps, args.warmup))
            except Exception as e:  # noqa: BLE001 - recorded: which transports run on this machine is a result
                row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            rows.append(row)
            print(rows[-1], flush=True)
            save(rows, args.out)  # each row as it comes: a run stopped by a time limit keeps what it measured
    show(rows)
    print(f"wrote {args.out}")


def save(rows: list[dict], out: str) -> None:
    """Every row with its ratios to the local engine's and the plain loop's of its population, precision, layout
    and mode, and to the plain eager loop's, written to ``out``."""
    for row in rows:
        same = [r for r in rows if all(r[k] == row[k] for k in ("population", "precision", "memory_format", "mode"))]
        for baseline in ("local", "plain"):
            base = next((r for r in same if r["engine"] == baseline and r.get("step_ms")), None)
            row[f"step_vs_{baseline}"] = row["step_ms"] / base["step_ms"] if base and row.get("step_ms") else None
        eager_plain = next(
            (
                r
                for r in rows
                if r["engine"] == "plain"
                and r["mode"] == "eager"
                and r.get("step_ms")
                and all(r[k] == row[k] for k in ("population", "precision", "memory_format"))
            ),
            None,
        )
        row["speedup_vs_plain_eager"] = (
            eager_plain["step_ms"] / row["step_ms"] if eager_plain and row.get("step_ms") else None
        )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out)


def show(rows: list[dict]) -> None:
    table = Table(title="population step: mean step, median critical-path compute")
    columns = [
        "population",
        "precision",
        "layout",
        "mode",
        "engine",
        "step ms",
        "images/s",
        "compute ms",
        "overhead",
        "step / local",
        "step / plain",
        "plain eager / step",
    ]
    for column in columns:
        table.add_column(column, justify="left" if columns.index(column) < 5 else "right")
    for r in rows:
        named = [r["population"], r["precision"], r["memory_format"], r["mode"], r["engine"]]
        if r["error"]:
            table.add_row(*named, f"failed: {r['error'][:60]}", *[""] * 6)
            continue
        overhead = (
            "" if r["exchange_overhead"] is None or r["engine"] == "local" else f"{100 * r['exchange_overhead']:+.1f} %"
        )
        compute = "" if r["compute_ms"] is None else f"{r['compute_ms']:.1f}"
        ratios = [
            f"{r[key]:.2f}" if r.get(key) else ""
            for key in ("step_vs_local", "step_vs_plain", "speedup_vs_plain_eager")
        ]
        table.add_row(*named, f"{r['step_ms']:.1f}", f"{r['images_per_s']:.0f}", compute, overhead, *ratios)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()

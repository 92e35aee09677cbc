"""Step time, driver time, start-up and exchange volume against population size K, on the Ray engine
(afd+ffl: ring and fusion).

    python experiments/bench_scaling.py                    # K = 2, 4, 8, 16 small CNNs, batch 64, CIFAR-shaped
    python experiments/bench_scaling.py --smoke-test

Every part gets an equal share of the machine's CPUs (fractional for large K). Per K and transport: the time per
step (an epoch of --steps after --warmup steps, over --steps: ``collective`` reports its steps only when the epoch
ends), the driver process's CPU time per step (all its threads: building and submitting calls, Ray's own
work), the seconds from asking for the population to its first step being possible (actors started, collective
group or graph built).
Exchange volume is counted from the tensors one step really moves (their sizes, from a real forward): per
member on the ring, its predecessor's public map and logits; at the fusion, every member's feature map,
logits and labels in, and the fused logits and each map's gradient out. Prints a table and writes Parquet.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from rich.console import Console
from rich.table import Table

from okd_ray.config import load_config
from okd_ray.engines.local import LocalEngine
from okd_ray.engines.ray import RayEngine
from okd_ray.population import plan_population


def nbytes(t) -> int:
    return 0 if t is None else t.nelement() * t.element_size()


def exchange_bytes(config) -> tuple[int, int]:
    """(ring bytes received per member, fusion bytes in + out) for one step, from a real step's messages."""
    engine = LocalEngine(config, plan_population(config))
    engine.begin_epoch(0)
    sent = [m.forward() for m in engine.population.members]
    fused = engine.population.fusion.step(*(s.to_fusion for s in sent)).to_members
    ring = sum(nbytes(t) for t in sent[0].ring)
    fusion_in = sum(nbytes(t) for s in sent for t in s.to_fusion)
    fusion_out = sum(nbytes(t) for message in fused for t in message)  # fused logits + each map's gradient
    engine.close()
    return ring, fusion_in + fusion_out


def timed_epoch(engine, warmup: int, steps: int) -> tuple[float, float]:
    """(wall seconds, driver CPU seconds) per step over ``steps`` steps, after ``warmup`` untimed ones."""
    engine.begin_epoch(0)
    engine.train_epoch(warmup, lambda _: None)
    wall, cpu = time.perf_counter(), time.process_time()
    engine.train_epoch(steps, lambda _: None)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 4, 8, 16])
    parser.add_argument("--arch", default="cnn16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--transports", nargs="+", default=["object_store", "direct", "compiled", "collective"])
    parser.add_argument("--address", default=None)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_scaling.parquet"))
    args = parser.parse_args()
    if args.smoke_test:
        args.sizes, args.steps, args.warmup = [2, 3], 3, 1
    ray.init(address=args.address, include_dashboard=False, configure_logging=False, log_to_driver=False)
    cpus = ray.cluster_resources().get("CPU", 1)
    total = args.steps + args.warmup
    rows = []
    for k in args.sizes:
        members = "[" + ", ".join([f"{{arch: {args.arch}}}"] * k) + "]"
        base = ["method.name=afd+ffl", f"members={members}", "data.name=synthetic-cifar100",
                f"data.batch_size={args.batch_size}", f"data.train_limit={args.batch_size * total}",
                "data.test_limit=64", "epochs=1", "device=cpu"]
        ring, fusion = exchange_bytes(load_config(None, base))
        share = int(100 * cpus / (k + 1)) / 100  # K members and the fusion share the machine
        for transport in args.transports:
            config = load_config(None, [*base, "engine=ray", f"ray.transport={transport}", "threads=1",
                                        f"ray.num_cpus_per_member={share}", f"ray.num_cpus_fusion={share}"])
            plan = plan_population(config)
            started = time.perf_counter()
            engine = RayEngine(config, plan)
            startup = time.perf_counter() - started
            try:
                step, driver = timed_epoch(engine, args.warmup, args.steps)
            finally:
                engine.close()
            rows.append({"members": k, "transport": transport, "batch_size": args.batch_size, "cpus_per_part": share,
                         "step_ms": 1000 * step, "images_per_s": args.batch_size / step,
                         "driver_cpu_ms_per_step": 1000 * driver, "driver_cpu_share": driver / step,
                         "startup_s": startup, "ring_mb_per_member": ring / 2**20, "fusion_mb": fusion / 2**20,
                         "total_mb": (k * ring + fusion) / 2**20, "cpus": cpus})
            print(rows[-1], flush=True)
    table = Table(title=f"scaling: afd+ffl, {args.arch} members, batch {args.batch_size}, {args.steps} steps")
    for c in ["K", "transport", "step ms", "driver CPU ms", "start-up s", "ring MB / member", "fusion MB",
              "total MB / step"]:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(str(r["members"]), r["transport"], f"{r['step_ms']:.1f}",
                      f"{r['driver_cpu_ms_per_step']:.2f}", f"{r['startup_s']:.1f}", f"{r['ring_mb_per_member']:.3f}",
                      f"{r['fusion_mb']:.3f}", f"{r['total_mb']:.3f}")
    Console(width=120).print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Step time and exchange volume against population size K, on the Ray engine (afd+ffl: ring and fusion).

    python experiments/bench_scaling.py                    # K = 2, 4, 8 small CNNs, batch 64, CIFAR-shaped data
    python experiments/bench_scaling.py --smoke-test

Exchange volume is counted from the tensors one step really moves (their sizes, from a real forward): per
member on the ring, its predecessor's public map and logits; at the fusion, every member's feature map and
logits in, and the fused logits and each map's gradient out. Prints a table and writes Parquet.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from rich.console import Console
from rich.table import Table

from okd_ray.config import load_config
from okd_ray.engines.local import LocalEngine
from okd_ray.engines.ray_engine import RayEngine
from okd_ray.population import plan_population

from bench_engine import step_times  # noqa: E402  (a sibling script)


def nbytes(t) -> int:
    return 0 if t is None else t.nelement() * t.element_size()


def exchange_bytes(config) -> tuple[int, int]:
    """(ring bytes received per member, fusion bytes in + out) for one step, from a real forward."""
    engine = LocalEngine(config, plan_population(config))
    engine.begin_epoch(0)
    labels, maps, public, logits = zip(*(m.forward() for m in engine.members))
    ring = nbytes(public[0]) + nbytes(logits[0])
    fusion_in = sum(nbytes(f) + nbytes(z) for f, z in zip(maps, logits)) + nbytes(labels[0])
    fusion_out = len(maps) * nbytes(logits[0]) + sum(nbytes(f) for f in maps)  # fused logits + map gradients
    return ring, fusion_in + fusion_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--arch", default="cnn16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--transports", nargs="+", default=["object_store", "compiled"])
    parser.add_argument("--address", default=None)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_scaling.parquet"))
    args = parser.parse_args()
    if args.smoke_test:
        args.sizes, args.steps, args.warmup = [2, 3], 3, 1
    ray.init(address=args.address, include_dashboard=False, configure_logging=False, log_to_driver=False)
    total = args.steps + args.warmup
    rows = []
    for k in args.sizes:
        members = "[" + ", ".join([f"{{arch: {args.arch}}}"] * k) + "]"
        base = ["method.name=afd+ffl", f"members={members}", "data.name=synthetic-cifar100",
                f"data.batch_size={args.batch_size}", f"data.train_limit={args.batch_size * total}",
                "data.test_limit=64", "epochs=1", "device=cpu"]
        ring, fusion = exchange_bytes(load_config(None, base))
        for transport in args.transports:
            config = load_config(None, [*base, "engine=ray", f"ray.transport={transport}"])
            engine = RayEngine(config, plan_population(config))
            try:
                step = statistics.median(step_times(engine, total)[args.warmup:])
            finally:
                engine.close()
            rows.append({"members": k, "transport": transport, "batch_size": args.batch_size,
                         "median_step_ms": 1000 * step, "images_per_s": args.batch_size / step,
                         "ring_mb_per_member": ring / 2**20, "fusion_mb": fusion / 2**20,
                         "total_mb": (k * ring + fusion) / 2**20, "cpus": ray.cluster_resources().get("CPU", 0)})
            print(rows[-1], flush=True)
    table = Table(title=f"scaling: afd+ffl, {args.arch} members, batch {args.batch_size}, medians")
    for c in ["K", "transport", "step ms", "ring MB / member", "fusion MB", "total MB / step"]:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(str(r["members"]), r["transport"], f"{r['median_step_ms']:.1f}",
                      f"{r['ring_mb_per_member']:.3f}", f"{r['fusion_mb']:.3f}", f"{r['total_mb']:.3f}")
    Console(width=120).print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

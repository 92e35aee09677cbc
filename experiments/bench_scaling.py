"""Step time, driver time, start-up and exchange volume against population size K, on the Ray engine
(afd+ffl: ring and fusion).

    python experiments/bench_scaling.py                    # K = 2, 8, 24 small CNNs, batch 64, CIFAR-shaped
    python experiments/bench_scaling.py --nodes 4 --sizes 16   # over 4 local raylets (a multi-node cluster)
    python experiments/bench_scaling.py --smoke-test

Every part gets an equal share of the machine's CPUs (fractional for large K). Per K and transport: the time per
step (an epoch of --steps after --warmup steps, over --steps: ``collective`` reports its steps only when the epoch
ends), the driver process's CPU time (all its threads: building and submitting calls, Ray's own work) split
into what each step costs and what each call of the engine costs (a call of one step against a call of --steps
steps), the seconds from asking for the population to its first step being possible (actors started, collective
group or graph built).
Exchange volume is counted from the tensors one step really moves (their sizes, from a real forward): per
member on the ring, its predecessor's public map and logits; at the fusion, every member's feature map,
logits and labels in, and the fused logits and each map's gradient out. Prints a table and writes Parquet.
"""

from __future__ import annotations

import argparse
import math
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


def timed_epoch(engine, warmup: int, steps: int) -> tuple[float, float, float]:
    """(wall seconds per step, driver CPU seconds per step, driver CPU seconds per call): after ``warmup``
    untimed steps, a call of one step, then a call of ``steps`` steps. The driver's CPU for a call of n steps is
    a + b n: b per step (what the driver does for each step), a per call (the epoch's own calls)."""
    engine.begin_epoch(0)
    engine.train_epoch(warmup, lambda: None)
    cpu = time.process_time()
    engine.train_epoch(1, lambda: None)
    one = time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    engine.train_epoch(steps, lambda: None)
    wall, many = time.perf_counter() - wall, time.process_time() - cpu
    per_step = (many - one) / (steps - 1)
    return wall / steps, per_step, one - per_step


def local_cluster(nodes: int, cpus_per_node: int):
    """A multi-node cluster on this machine: a head without CPUs and ``nodes`` worker raylets."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(nodes):
        cluster.add_node(num_cpus=cpus_per_node)
    cluster.wait_for_nodes()
    return cluster


def population(k: int, arch: str, batch_size: int, steps: int) -> list[str]:
    """afd+ffl over ``k`` members of ``arch``, with data for ``steps`` steps of ``batch_size`` CIFAR-shaped images."""
    members = "[" + ", ".join([f"{{arch: {arch}}}"] * k) + "]"
    return [
        "method.name=afd+ffl",
        f"members={members}",
        "data.name=synthetic-cifar100",
        f"data.batch_size={batch_size}",
        f"data.train_limit={batch_size * steps}",
        "data.test_limit=64",
        "epochs=1",
        "device=cpu",
    ]


def on_ray(base: list[str], transport: str, k: int, cpus: float, nodes: int = 1) -> list[str]:
    """``base`` on the Ray engine, one torch thread a part, K members and the fusion sharing ``cpus`` equally
    (on ``nodes`` nodes of equal size: a share that fits the parts a node must hold)."""
    share = math.floor(100 * (cpus / nodes) / math.ceil((k + 1) / nodes)) / 100
    return [
        *base,
        "engine=ray",
        f"ray.transport={transport}",
        "threads=1",
        f"ray.num_cpus_per_member={share}",
        f"ray.num_cpus_fusion={share}",
    ]


def measure(args) -> list[dict]:
    """A row per K and transport, on the cluster the driver is connected to."""
    cpus = ray.cluster_resources().get("CPU", 1)
    nodes = len([n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")])
    total = args.warmup + 1 + args.steps
    spread = ["ray.placement=spread"] if args.nodes else []
    rows = []
    for k in args.sizes:
        base = population(k, args.arch, args.batch_size, total)
        ring, fusion = exchange_bytes(load_config(None, base))
        for transport in args.transports:
            config = load_config(None, [*on_ray(base, transport, k, cpus, nodes), *spread])
            share = config.ray.num_cpus_per_member
            plan = plan_population(config)
            started = time.perf_counter()
            engine = RayEngine(config, plan)
            startup = time.perf_counter() - started
            try:
                step, driver, per_call = timed_epoch(engine, args.warmup, args.steps)
            finally:
                engine.close()
            rows.append(
                {
                    "members": k,
                    "transport": transport,
                    "nodes": nodes,
                    "batch_size": args.batch_size,
                    "cpus_per_part": share,
                    "step_ms": 1000 * step,
                    "images_per_s": args.batch_size / step,
                    "driver_cpu_ms_per_step": 1000 * driver,
                    "driver_cpu_ms_per_call": 1000 * per_call,
                    "driver_cpu_share": driver / step,
                    "startup_s": startup,
                    "ring_mb_per_member": ring / 2**20,
                    "fusion_mb": fusion / 2**20,
                    "total_mb": (k * ring + fusion) / 2**20,
                    "cpus": cpus,
                }
            )
            print(rows[-1], flush=True)
    return rows


def publish(table: Table, rows: list[dict], out: str) -> None:
    """Print the table; write the rows to Parquet at ``out``."""
    Console(width=120).print(table)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 8, 24])
    parser.add_argument("--arch", default="cnn16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--transports", nargs="+", default=["object_store", "direct", "compiled", "collective"])
    parser.add_argument("--address", default=None)
    parser.add_argument(
        "--nodes", type=int, default=0, help="a local multi-node cluster of this many raylets (parts spread over them)"
    )
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument(
        "--out",
        default=None,
        help="default: results/bench_scaling.parquet, with --nodes N results/bench_scaling_Nnodes.parquet",
    )
    args = parser.parse_args()
    args.out = args.out or str(
        Path(__file__).parent
        / "results"
        / (f"bench_scaling_{args.nodes}nodes.parquet" if args.nodes else "bench_scaling.parquet")
    )
    if args.smoke_test:
        args.sizes, args.steps, args.warmup = [2, 3], 3, 1
    cluster = local_cluster(args.nodes, args.cpus_per_node) if args.nodes else None
    ray.init(
        address=cluster.address if cluster else args.address,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
    )
    try:
        rows = measure(args)
    finally:
        ray.shutdown()
        if cluster:
            cluster.shutdown()
    where = f"{rows[0]['nodes']} raylets" if args.nodes else "one node"
    table = Table(title=f"scaling: afd+ffl, {args.arch} members, batch {args.batch_size}, {args.steps} steps, {where}")
    for c in [
        "K",
        "transport",
        "step ms",
        "driver CPU ms / step",
        "driver CPU ms / call",
        "start-up s",
        "ring MB / member",
        "fusion MB",
        "total MB / step",
    ]:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(
            str(r["members"]),
            r["transport"],
            f"{r['step_ms']:.1f}",
            f"{r['driver_cpu_ms_per_step']:.2f}",
            f"{r['driver_cpu_ms_per_call']:.1f}",
            f"{r['startup_s']:.1f}",
            f"{r['ring_mb_per_member']:.3f}",
            f"{r['fusion_mb']:.3f}",
            f"{r['total_mb']:.3f}",
        )
    publish(table, rows, args.out)


if __name__ == "__main__":
    main()

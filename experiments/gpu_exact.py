"""Is the Ray engine bit-identical to the local engine on this machine's device? A small population trained by both,
per transport, precision, mode (eager, compiled), memory format and replicas, its metrics compared exactly.

    python experiments/gpu_exact.py --device cuda          # gpu_check.sh's run: every case below on the GPU(s)
    python experiments/gpu_exact.py --device cpu --smoke   # two cases, to check the script

Prints a table and writes experiments/results/gpu_exact_<device>.parquet: one row per case with whether every
metric of every epoch and part is equal, the local and Ray wall times, or the error a case raised (a transport the
device cannot serve is a result too). The local engine's run of a case is made once and serves every transport.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from rich.console import Console
from rich.table import Table

from okd_ray.config import load_config
from okd_ray.engines import release_hosts
from okd_ray.run import train

METHOD = "method.name=afd+ffl"  # on a cnn16 and a resnet8 member, each as many replicas as a case says
STEPS = [
    "data.name=synthetic-cifar100",
    "data.train_limit=192",
    "data.validation=0",
    "data.batch_size=64",
    "data.test_limit=128",
    "data.test_batch_size=64",
    "epochs=2",
    "threads=1",
]
TIMINGS = ("epoch_seconds", "elapsed_seconds")


def cases(smoke: bool) -> list[dict]:
    """Every transport in fp32 and bf16 eagerly; compiled and channels_last on two transports; CUDA graphs
    (compile's reduce-overhead mode) on one; replicas on two."""
    if smoke:
        return [
            dict(transport="object_store", precision="fp32", mode="eager", memory_format="contiguous", replicas=1),
            dict(transport="direct", precision="fp32", mode="compiled", memory_format="channels_last", replicas=1),
        ]
    out = [
        dict(transport=t, precision=p, mode="eager", memory_format="contiguous", replicas=1)
        for t, p in itertools.product(["object_store", "compiled", "direct", "collective"], ["fp32", "bf16"])
    ]
    out += [
        dict(transport=t, precision=p, mode="compiled", memory_format=f, replicas=1)
        for t, p, f in itertools.product(["direct", "object_store"], ["fp32", "bf16"], ["contiguous", "channels_last"])
    ]
    out += [dict(transport="direct", precision="fp32", mode="reduce-overhead", memory_format="contiguous", replicas=1)]
    out += [
        dict(transport=t, precision="fp32", mode="eager", memory_format="contiguous", replicas=2)
        for t in ["direct", "object_store"]
    ]
    return out


def overrides(case: dict, device: str) -> list[str]:
    replicas = case["replicas"]
    return [
        *STEPS,
        METHOD,
        f"device={device}",
        f"precision={case['precision']}",
        {"eager": "compile=false", "compiled": "compile=true"}.get(case["mode"], f"compile={{mode: {case['mode']}}}"),
        f"memory_format={case['memory_format']}",
        f"members=[{{arch: cnn16, replicas: {replicas}}}, {{arch: resnet8, replicas: {replicas}}}]",
    ]


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or Path(__file__).parent / "results" / f"gpu_exact_{args.device}.parquet")
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    gpus = ray.cluster_resources().get("GPU", 0)
    local: dict[str, tuple[list[dict], float]] = {}  # each case's local run, by its overrides
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for i, case in enumerate(cases(args.smoke)):
            base = overrides(case, args.device)
            key = repr(base)
            row = {
                **case,
                "device": args.device,
                "gpus": gpus,
                "identical": None,
                "local_s": None,
                "ray_s": None,
                "error": None,
            }
            try:
                if key not in local:
                    started = time.perf_counter()
                    run = train(load_config(None, base), run_dir=f"{folder}/local-{i}", quiet=True)
                    local[key] = (run.rows, time.perf_counter() - started)
                rows_local, row["local_s"] = local[key]
                parts = 2 * case["replicas"] + 1
                share = (
                    [
                        f"ray.num_gpus_per_member={min(1.0, gpus / parts):g}",
                        f"ray.num_gpus_fusion={min(1.0, gpus / parts):g}",
                    ]
                    if args.device == "cuda"
                    else []
                )
                config = load_config(None, [*base, "engine=ray", f"ray.transport={case['transport']}", *share])
                started = time.perf_counter()
                run = train(config, run_dir=f"{folder}/ray-{i}", quiet=True)
                row["ray_s"] = time.perf_counter() - started
                row["identical"] = strip(run.rows) == strip(rows_local)
            except Exception as e:  # noqa: BLE001 - recorded: what the device cannot serve is a result
                row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            release_hosts()
            rows.append(row)
            print(row, flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), out)  # each case as it ends: a time limit keeps the rest
    show(rows)
    print(f"wrote {out}")


def show(rows: list[dict]) -> None:
    table = Table(title="Ray against local, bit for bit")
    for column in ["transport", "precision", "mode", "layout", "replicas", "identical", "local s", "ray s", "error"]:
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["transport"],
            r["precision"],
            r["mode"],
            r["memory_format"],
            str(r["replicas"]),
            "" if r["identical"] is None else str(r["identical"]),
            f"{r['local_s']:.1f}" if r["local_s"] else "",
            f"{r['ray_s']:.1f}" if r["ray_s"] else "",
            (r["error"] or "")[:70],
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()

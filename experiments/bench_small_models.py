"""Each small model trained alone on Fashion-MNIST: test top-1 per epoch and CPU time at 1 and 2 threads.

    python experiments/bench_small_models.py                     # fmnet-s and fmnet-l, seeds 0 1, 60k x 10 epochs
    python experiments/bench_small_models.py --jobs 2            # two trainings side by side at 1 thread each
    python experiments/bench_small_models.py --augment both      # also with the loader's crop-and-flip
    python experiments/bench_small_models.py --seeds 0 --epochs 20 \
        --out experiments/results/small_models_epochs20.parquet
    python experiments/bench_small_models.py --smoke-test        # a few batches, to check the script

The study budget this checks: a study runs ~40 population runs, each training a small and a large member
together on a 2-core CPU, in about 5 CPU-hours. Training here is what the population trainer does for one
member with method `vanilla`: plain cross-entropy, SGD with Nesterov momentum 0.9 and weight decay 5e-4,
batch 128, the learning rate set per epoch by the cosine schedule (okd_ray.optim), and the
whole 10k test set evaluated after every epoch. Training runs at 1 thread per process (`--jobs` processes
at once, the way a study runs two trials side by side); afterwards each model trains one more epoch alone
at 2 threads, for the 2-thread figure. CPU seconds are the process's own (time.process_time), so other
load on the machine inflates wall time but not them.

Prints a table and writes experiments/results/small_models.parquet: one row per (model, seed, epoch,
threads) with the test top-1, the training loss and top-1, and the wall and CPU seconds of training and
evaluation. The committed results came from `--seeds 0 1 2 --augment both --jobs 2` and, for the
plateau check (twice the epochs), the 20-epoch line above.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from okd_ray.data import build_dataset
from okd_ray.models import build_model
from okd_ray.optim import OptimizerConfig, ScheduleConfig, make_optimizer, set_epoch_lr

OUT = Path(__file__).parent / "results" / "small_models.parquet"
STUDY_RUNS = 40  # 8 methods x 5 seeds


def macs(model: nn.Module, in_channels: int, size: int) -> int:
    """Multiply-accumulates of one forward pass on one image (convolutions and linear layers)."""
    total = 0

    def count(module: nn.Module, _: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += out.numel() * k
        else:
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    mode = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, in_channels, size, size))
    model.train(mode)
    for h in hooks:
        h.remove()
    return total


def train(job: dict) -> list[dict]:
    """Train one model alone for job['epochs'] epochs; a row per epoch."""
    torch.set_num_threads(job["threads"])
    data = build_dataset(
        "fashion-mnist",
        root=job["root"],
        batch_size=128,
        seed=job["seed"],
        augment=job["augment"],
        train_limit=job["train_limit"],
        test_limit=job["test_limit"],
    )
    info = data.info
    torch.manual_seed(job["seed"])
    model = build_model(job["model"], in_channels=info.in_channels, num_classes=info.num_classes)
    base = {
        "model": job["model"],
        "seed": job["seed"],
        "threads": job["threads"],
        "jobs": job["jobs"],
        "train_limit": job["train_limit"] or 60_000,
        "augment": job["augment"],
        "base_lr": job["lr"],
        "epochs": job["epochs"],
        "params": sum(p.numel() for p in model.parameters()),
        "mmacs": macs(model, info.in_channels, info.image_size) / 1e6,
    }
    settings = OptimizerConfig(lr=job["lr"], momentum=0.9, nesterov=True, weight_decay=5e-4)
    optimizer = make_optimizer(model.parameters(), settings)
    schedule = ScheduleConfig(kind="cosine")
    rows = []
    for epoch in range(job["epochs"]):
        lr = set_epoch_lr(optimizer, settings, schedule, epoch, job["epochs"])
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        wall, cpu = time.perf_counter(), time.process_time()
        for x, y, _ in data.train_batches(epoch):
            _, z = model(x)
            loss = F.cross_entropy(z, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += (z.argmax(1) == y).sum().item()
            seen += len(y)
        train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
        model.eval()
        test_correct, test_seen = 0, 0
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            for x, y in data.eval_batches("test"):
                test_correct += (model(x)[1].argmax(1) == y).sum().item()
                test_seen += len(y)
        rows.append(
            {
                **base,
                "epoch": epoch,
                "lr": lr,
                "train_loss": loss_sum / seen,
                "train_top1": 100 * correct / seen,
                "test_top1": 100 * test_correct / test_seen,
                "test_images": test_seen,
                "train_wall_s": train_wall,
                "train_cpu_s": train_cpu,
                "eval_wall_s": time.perf_counter() - wall,
                "eval_cpu_s": time.process_time() - cpu,
            }
        )
        r = rows[-1]
        print(
            f"{r['model']} seed {r['seed']} threads {r['threads']} epoch {epoch}: test top-1 {r['test_top1']:.2f}, "
            f"train {train_wall:.1f} s wall / {train_cpu:.1f} s CPU, eval {r['eval_wall_s']:.1f} s",
            flush=True,
        )
    return rows


def run_jobs(jobs: list[dict], processes: int) -> list[dict]:
    """Each job in a fresh process (its own thread setting), `processes` at a time."""
    with mp.get_context("spawn").Pool(processes, maxtasksperchild=1) as pool:
        return [row for rows in pool.imap(train, jobs) for row in rows]


def label(row: dict) -> str:
    return row["model"] + (" +aug" if row["augment"] else "")


def show(rows: list[dict], console: Console) -> None:
    one = [r for r in rows if r["threads"] == 1]
    models = list(dict.fromkeys(map(label, rows)))
    seeds = sorted({r["seed"] for r in one})
    epochs = max(r["epoch"] for r in one) + 1

    curve = Table(title="test top-1 (%) per epoch, trained alone at 1 thread")
    curve.add_column("epoch", justify="right")
    for m in models:
        for s in seeds:
            curve.add_column(f"{m} s{s}", justify="right")
    for e in range(epochs):
        cells = [
            f"{r['test_top1']:.2f}"
            for m in models
            for s in seeds
            for r in one
            if (label(r), r["seed"], r["epoch"]) == (m, s, e)
        ]
        curve.add_row(str(e + 1), *cells)
    console.print(curve)

    summary = Table(title="per model: accuracy and CPU cost (seconds per epoch include the 10k-image evaluation)")
    for column in [
        "model",
        "params",
        "MMACs",
        "final top-1",
        "s/epoch 1 thr (wall, CPU)",
        "s/epoch 2 thr (wall, CPU)",
        "CPU-s per training",
    ]:
        summary.add_column(column, justify="left" if column == "model" else "right")
    total = 0.0
    for m in models:
        mine = [r for r in one if label(r) == m]
        final = [r["test_top1"] for r in mine if r["epoch"] == epochs - 1]
        wall = statistics.mean(r["train_wall_s"] + r["eval_wall_s"] for r in mine)
        cpu = statistics.mean(r["train_cpu_s"] + r["eval_cpu_s"] for r in mine)
        two = [r for r in rows if label(r) == m and r["threads"] == 2]
        two_cell = (
            (
                f"{statistics.mean(r['train_wall_s'] + r['eval_wall_s'] for r in two):.1f}, "
                f"{statistics.mean(r['train_cpu_s'] + r['eval_cpu_s'] for r in two):.1f}"
            )
            if two
            else ""
        )
        spread = f" ± {statistics.stdev(final):.2f}" if len(final) > 1 else ""
        summary.add_row(
            m,
            f"{mine[0]['params']:,}",
            f"{mine[0]['mmacs']:.2f}",
            f"{statistics.mean(final):.2f}{spread} (min {min(final):.2f})",
            f"{wall:.1f}, {cpu:.1f}",
            two_cell,
            f"{cpu * epochs:.0f}",
        )
        if not mine[0]["augment"]:
            total += cpu * epochs
    console.print(summary)
    console.print(
        f"the models together (no augmentation): {total:.0f} CPU-s per run; {STUDY_RUNS} runs: "
        f"{STUDY_RUNS * total / 3600:.2f} CPU-hours before the methods' extras (discriminators, fusion)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fmnet-s", "fmnet-l"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--train-limit", type=int, default=None, help="first N training images (default: all 60k)")
    parser.add_argument(
        "--augment",
        choices=["none", "default", "both"],
        default="none",
        help="none, the loader's default (pad-2 crop and flip), or both in turn",
    )
    parser.add_argument("--jobs", type=int, default=1, choices=[1, 2], help="trainings at once, 1 thread each")
    parser.add_argument("--no-two-threads", action="store_true", help="skip the 2-thread epoch")
    parser.add_argument("--root", default=None, help="data.root for Fashion-MNIST (default: the usual places)")
    parser.add_argument("--smoke-test", action="store_true", help="2 tiny epochs of each model, one seed")
    parser.add_argument("--out", default=None, help=f"Parquet file (default {OUT}; a temporary one for --smoke-test)")
    args = parser.parse_args()
    test_limit = None
    if args.smoke_test:
        args.seeds, args.epochs, args.train_limit, test_limit = args.seeds[:1], 2, 512, 512
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp()) / OUT.name if args.smoke_test else OUT)

    common = {
        "epochs": args.epochs,
        "lr": args.lr,
        "train_limit": args.train_limit,
        "test_limit": test_limit,
        "augment": args.augment == "default",
        "root": args.root,
    }
    augment = {"none": [False], "default": [True], "both": [False, True]}[args.augment]
    jobs = [
        {**common, "model": m, "seed": s, "augment": a, "threads": 1, "jobs": args.jobs}
        for a in augment
        for m in args.models
        for s in args.seeds
    ]
    rows = run_jobs(jobs, args.jobs)
    if not args.no_two_threads:
        # One epoch of a fresh model (the same work as any other epoch) alone at 2 threads.
        rows += run_jobs(
            [{**common, "model": m, "seed": args.seeds[0], "threads": 2, "jobs": 1, "epochs": 1} for m in args.models],
            1,
        )

    show(rows, Console(width=160))
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

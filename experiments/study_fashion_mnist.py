"""A CPU-scale study on real data: every method on Fashion-MNIST, the same two members and budget, several seeds.

    python experiments/study_fashion_mnist.py                      # 6 methods x 3 seeds, resumable
    python experiments/study_fashion_mnist.py --seeds 0 1 2 3 4    # more seeds: finished runs are skipped

Each run is experiments/configs/fashion-mnist/<method>.yaml with its seed; a run whose checkpoint holds its last
epoch is skipped, an unfinished one resumes from its checkpoint. Writes a table of mean ± std (over seeds) of
each member's final test top-1, the ensemble's and the fused classifier's, as Parquet and Markdown, and a plot.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from okd_ray.config import dump_config, load_config
from okd_ray.checkpoint import read_manifest
from okd_ray.run import train
from okd_ray.storage import RunStore

HERE = Path(__file__).parent
METHODS = ["vanilla", "dml", "l1", "afd", "ffl", "afd+ffl"]


def run_dir(runs: Path, method: str, seed: int) -> Path:
    return runs / f"{method.replace('+', '-')}-seed{seed}"


def finished(folder: Path, config) -> bool:
    """True when ``folder`` holds this very config run to its last epoch; another config there is an error."""
    store = RunStore(str(folder))
    if not store.exists("config.yaml"):
        return False
    if store.read_text("config.yaml") != dump_config(config):
        raise SystemExit(f"{folder} holds a run of another config (budget or settings changed); "
                         "give a new --runs folder so that every method keeps the same budget")
    manifest = read_manifest(store)
    return manifest is not None and manifest.epoch >= config.epochs


def run_study(methods: list[str], seeds: list[int], runs: Path, overrides: list[str] = (),
              config_dir: Path = HERE / "configs" / "fashion-mnist", quiet: bool = True) -> list[dict]:
    """Train every (method, seed) not finished yet; return the final-epoch rows of all runs, tagged with seed."""
    rows = []
    for method in methods:
        for seed in seeds:
            config = load_config(config_dir / f"{method.replace('+', '-')}.yaml", [f"seed={seed}", *overrides])
            folder = run_dir(runs, method, seed)
            if finished(folder, config):
                print(f"{folder.name}: finished, skipped", flush=True)
            else:
                print(f"{folder.name}: training", flush=True)
                train(config, run_dir=str(folder), quiet=quiet)
            table = RunStore(str(folder)).read_table("metrics.parquet").to_pylist()
            last = max(r["epoch"] for r in table)
            rows += [{**r, "seed": seed} for r in table if r["epoch"] == last]
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds of the final test top-1, per method and part (m0, m1, ensemble, fused)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["part"]), []).append(r["test_top1"])
    return [
        {"method": method, "part": part, "seeds": len(v), "mean_test_top1": statistics.mean(v),
         "std_test_top1": statistics.stdev(v) if len(v) > 1 else 0.0}
        for (method, part), v in groups.items()
    ]


def markdown(summary: list[dict]) -> str:
    parts = list(dict.fromkeys(s["part"] for s in summary))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    cell = {(s["method"], s["part"]): s for s in summary}
    lines = ["| method | " + " | ".join(parts) + " |", "|---" * (len(parts) + 1) + "|"]
    for m in methods:
        values = [f"{cell[m, p]['mean_test_top1']:.2f} ± {cell[m, p]['std_test_top1']:.2f}" if (m, p) in cell else ""
                  for p in parts]
        lines.append(f"| {m} | " + " | ".join(values) + " |")
    seeds = max(s["seeds"] for s in summary)
    return "\n".join(lines) + f"\n\nTest top-1 (%), mean ± std over {seeds} seeds.\n"


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(dict.fromkeys(s["part"] for s in summary))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    cell = {(s["method"], s["part"]): s for s in summary}
    width = 0.8 / len(parts)
    fig, ax = plt.subplots(figsize=(1.4 * len(methods) + 2, 4))
    for i, part in enumerate(parts):
        xs = [j + i * width for j, m in enumerate(methods) if (m, part) in cell]
        ys = [cell[m, part]["mean_test_top1"] for m in methods if (m, part) in cell]
        es = [cell[m, part]["std_test_top1"] for m in methods if (m, part) in cell]
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=part)
    ax.set_xticks([j + width * (len(parts) - 1) / 2 for j in range(len(methods))], methods)
    ax.set_ylabel("test top-1 (%)")
    low = min(s["mean_test_top1"] - s["std_test_top1"] for s in summary)
    ax.set_ylim(max(0.0, low - 2), None)
    ax.legend(ncol=len(parts), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs", default="runs/study-fashion-mnist", help="where the runs' folders go")
    parser.add_argument("--out", default=str(HERE / "results" / "study_fashion_mnist"), help="table and plot prefix")
    parser.add_argument("overrides", nargs="*", help="key=value for every run (the same budget for all methods)")
    args = parser.parse_args()
    rows = run_study(args.methods, args.seeds, Path(args.runs), args.overrides)
    summary = summarize(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(summary), out.with_suffix(".parquet"))
    out.with_suffix(".md").write_text(markdown(summary))
    plot(summary, out.with_suffix(".png"))
    print(markdown(summary))
    print(f"wrote {out}.parquet, .md, .png")


if __name__ == "__main__":
    main()

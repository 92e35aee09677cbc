"""The Fashion-MNIST study: seven methods on a heterogeneous pair, five paired seeds, trained to convergence.

    python experiments/study_fashion_mnist.py                  # every (method, seed) still missing, then the report
    python experiments/study_fashion_mnist.py --report-only    # the report from the runs already there
    python experiments/study_fashion_mnist.py --tune           # the same, each method's weights tuned first

With --tune, each method but vanilla is first swept with `okd-ray tune` (Optuna TPE with ASHA, the same number of
trials and epochs for every method, its space in configs/fashion-mnist-search/), selecting on a validation split
of the training images; the sweeps run on seed TUNE_SEED, and each selected config is then retrained on every
training image (data.validation=0) on the study's seeds, which no trial used. The report sets the tuned table
beside the untuned one (--untuned, the committed study) and pairs each method's tuned and untuned runs seed by seed.

Each (method, seed) is `okd-ray train experiments/configs/fashion-mnist.yaml method.name=M seed=S`, in its own
folder under --runs and its own process (one torch thread; --jobs at a time). A finished run is skipped and an
interrupted one resumes, so the command can be stopped and started again. Seeds are paired: a seed gives every
method the same data order and the same initial weights, so each method's difference to vanilla and to DML is
taken seed by seed, with a paired t interval. Writes, under experiments/results/:
study_fashion_mnist.parquet (every run's every epoch), study_fashion_mnist_intervals.parquet (the paired
differences), study_fashion_mnist.md (tables) and the plots study_fashion_mnist_{curves,differences}.png.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
from scipy import stats

from okd_ray import runfolder
from okd_ray.checkpoint import read_manifest
from okd_ray.config import dump_config, load_config, parse_config
from okd_ray.metrics import union_table
from okd_ray.storage import RunStore

HERE = Path(__file__).parent
CONFIG = HERE / "configs" / "fashion-mnist.yaml"
SPACES = HERE / "configs" / "fashion-mnist-search"  # a search space per tuned method
METHODS = ["vanilla", "dml", "kdcl", "l1", "afd", "ffl", "afd+ffl"]
BASELINES = ["vanilla", "dml"]
TUNE_SEED = 100  # the sweeps' seed (data order, initial weights, validation split, TPE): no retrain uses it
RECIPES = {"kdcl": ["data.augment=true", "data.augment_per_member=true"]}  # KDCL's own: a member, an augmentation


def run_dir(runs: Path, method: str, seed: int) -> Path:
    return runs / f"{method.replace('+', '-')}-seed{seed}"


def sweep_name(method: str) -> str:
    return method.replace("+", "-")


def run_spec(method: str, seed: int, overrides: list[str], kept: Path | None) -> tuple[Path, list[str]]:
    """The config file and overrides of one run: the study's config for the method, or, tuned, the config the
    method's sweep selected (kept under ``kept``), retrained on every training image."""
    if kept is None or method == "vanilla":
        return CONFIG, [f"method.name={method}", f"seed={seed}", *overrides]
    return kept / sweep_name(method) / "best_config.yaml", [f"seed={seed}", "data.validation=0", *overrides]


def tune_command(method: str, storage: Path, overrides: list[str], trials: int, jobs: int) -> list[str]:
    """``okd-ray tune`` for one method: its space, TPE with ASHA, selecting on mean_val_top1 (the default)."""
    return [
        "okd-ray",
        "tune",
        str(CONFIG),
        f"method.name={method}",
        f"seed={TUNE_SEED}",
        *RECIPES.get(method, []),
        *overrides,
        "--space",
        str(SPACES / f"{method}.yaml"),
        "--num-samples",
        str(trials),
        "--scheduler",
        "asha",
        "--max-concurrent",
        str(jobs),
        "--storage-path",
        str(storage),
        "--name",
        sweep_name(method),
        "--quiet",
    ]


KEPT = ("trials.parquet", "best_config.yaml")  # what each sweep leaves to be committed, with cost.json


def tune(methods: list[str], storage: Path, kept: Path, overrides: list[str], trials: int, jobs: int) -> None:
    """Sweep each method whose selected config is not yet kept (an interrupted sweep resumes), one at a time, its
    trials ``jobs`` at once; keep its trials, selected config and wall time (cost.json) under ``kept``."""
    for method in methods:
        mine = kept / sweep_name(method)
        if method == "vanilla" or (mine / "best_config.yaml").exists():
            continue
        command = tune_command(method, storage, overrides, trials, jobs)
        print(shlex.join(command), flush=True)
        started = time.perf_counter()
        resume = ["--resume"] if (storage / sweep_name(method)).exists() else []
        done = subprocess.run(
            [sys.executable, "-m", "okd_ray.cli", *command[1:], *resume], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"sweep {method} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        mine.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            shutil.copy(storage / sweep_name(method) / name, mine / name)
        (mine / "cost.json").write_text(
            json.dumps({"seconds": time.perf_counter() - started, "jobs": jobs, "command": shlex.join(command)})
        )
        print(done.stdout, flush=True)


def finished(folder: Path, config) -> bool:
    """True when ``folder`` holds this very config run to its last epoch; another config there is an error. The
    held config is read as okd-ray reads it, so a key added since it ran takes its default (which leaves a run
    as it was)."""
    store = RunStore(str(folder))
    if not store.exists(runfolder.CONFIG):
        return False
    held = parse_config(store.read_text(runfolder.CONFIG), source=str(folder / runfolder.CONFIG))
    if dump_config(held) != dump_config(config):  # stricter than a resume: epochs count too
        raise SystemExit(
            f"{folder} holds a run of another config (budget or settings changed); "
            "give a new --runs folder so that every method keeps the same budget"
        )
    manifest = read_manifest(store)  # since okd-ray records the config before a run's first checkpoint: none yet
    return manifest is not None and manifest.latest is not None and manifest.latest.epoch >= config.epochs


def train_one(method: str, seed: int, runs: Path, overrides: list[str], kept: Path | None = None) -> str:
    """One run in its own process (so runs go side by side), resumed if it was interrupted."""
    folder = run_dir(runs, method, seed)
    path, items = run_spec(method, seed, overrides, kept)
    if finished(folder, load_config(path, items)):
        return f"{folder.name}: finished, skipped"
    command = [sys.executable, "-m", "okd_ray.cli", "train", str(path), *items, "--run-dir", str(folder), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{folder.name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return f"{folder.name}: trained"


def run_study(
    methods: list[str], seeds: list[int], runs: Path, overrides: list[str] = (), jobs: int = 2, kept: Path | None = None
) -> None:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for line in pool.map(
            lambda ms: train_one(*ms, runs, list(overrides), kept), [(m, s) for s in seeds for m in methods]
        ):
            print(line, flush=True)


def collect(
    methods: list[str], seeds: list[int], runs: Path, overrides: list[str] = (), kept: Path | None = None
) -> list[dict]:
    """Every epoch's rows of every finished run, tagged with its seed; a run still training is left out."""
    rows = []
    for method in methods:
        for seed in seeds:
            folder = run_dir(runs, method, seed)
            if finished(folder, load_config(*run_spec(method, seed, list(overrides), kept))):
                rows += [{**r, "seed": seed} for r in pq.read_table(folder / "metrics.parquet").to_pylist()]
    return rows


def final_top1(rows: list[dict]) -> dict[tuple[str, str, int], float]:
    """(method, part, seed) -> the last epoch's test top-1; members keyed m0/m1 by their place."""
    last = {}
    for r in rows:
        key = (r["method"], r["seed"])
        last[key] = max(last.get(key, r["epoch"]), r["epoch"])
    out = {}
    for r in rows:
        if r["epoch"] == last[r["method"], r["seed"]] and r.get("test_top1") is not None:
            out[r["method"], part_key(r), r["seed"]] = r["test_top1"]
    return out


def part_key(row: dict) -> str:
    return row["part"].split(":")[0] if row["kind"] == "member" else row["kind"]


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of a - b over two or more paired seeds, its standard deviation, and the paired t test's 95 %
    interval and p (undefined, NaN, when the differences do not vary)."""
    d = [x - y for x, y in zip(a, b)]
    mean, sd = statistics.mean(d), statistics.stdev(d)
    low = high = p = float("nan")
    if sd > 0:
        test = stats.ttest_rel(a, b)
        (low, high), p = test.confidence_interval(0.95), test.pvalue
    return {
        "seeds": len(d),
        "mean_diff": mean,
        "sd_diff": sd,
        "ci_low": float(low),
        "ci_high": float(high),
        "p": float(p),
    }


UNTUNED = " (untuned)"  # the untuned study's methods, in the tuned study's comparisons


def differences(final: dict, methods: list[str], seeds: list[int], untuned: dict | None = None) -> list[dict]:
    """Each method against each baseline, part by part (the fused classifier against the baseline's ensemble),
    and the comparisons the papers make: AFD against L1 alignment, FFL's fused classifier against its own parts;
    given the untuned study's results, each method tuned against itself untuned."""
    out = []
    final = {**final, **{(m + UNTUNED, p, s): v for (m, p, s), v in (untuned or {}).items()}}

    def add(kind, method, part, against, against_part):
        pairs = [
            (final[method, part, s], final[against, against_part, s])
            for s in seeds
            if (method, part, s) in final and (against, against_part, s) in final
        ]
        if len(pairs) > 1:
            a, b = zip(*pairs)
            out.append(
                {
                    "comparison": kind,
                    "method": method,
                    "part": part,
                    "against": against,
                    "against_part": against_part,
                    **paired(list(a), list(b)),
                }
            )

    for i, baseline in enumerate(BASELINES):
        for method in methods:
            if method not in BASELINES[: i + 1]:  # vanilla against DML is DML against vanilla: once
                for part in ("m0", "m1", "ensemble"):
                    add(f"vs {baseline}", method, part, baseline, part)
                add(f"vs {baseline}", method, "fused", baseline, "ensemble")
    for part in ("m0", "m1", "ensemble"):
        add("afd vs l1", "afd", part, "l1", part)
    for method in ("ffl", "afd+ffl"):
        for part in ("m0", "m1", "ensemble"):
            add("fused vs own parts", method, "fused", method, part)
    if untuned:
        for method in methods:
            for part in ("m0", "m1", "ensemble", "fused"):
                add("tuned vs untuned", method, part, method + UNTUNED, part)
    tested = [d for d in out if not math.isnan(d["p"])]
    qs = stats.false_discovery_control([d["p"] for d in tested]) if tested else []
    for d in out:
        d["q_bh"] = float("nan")
    for d, q in zip(tested, qs):  # Benjamini-Hochberg over every comparison of the report
        d["q_bh"] = float(q)
    return out


def established(row: dict) -> str:
    """A difference is established when its 95 % interval excludes zero."""
    return "yes" if row["ci_low"] > 0 or row["ci_high"] < 0 else "no"


def survives(row: dict) -> str:
    """...and still holds among all the report's comparisons: Benjamini-Hochberg q below 0.05."""
    return "yes" if row["q_bh"] < 0.05 else "no"


def spread(final: dict, method: str, part: str, seeds: list[int]) -> str:
    v = [final[method, part, s] for s in seeds if (method, part, s) in final]
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else ""


def markdown(
    final: dict, diffs: list[dict], rows: list[dict], methods: list[str], seeds: list[int], untuned: dict | None = None
) -> str:
    parts = ["m0", "m1", "ensemble", "fused"]
    names = {p: next((r["part"] for r in rows if part_key(r) == p), p) for p in parts}
    lines = [
        f"Test top-1 (%) on all 10,000 Fashion-MNIST test images after the last epoch, mean ± std over the "
        f"seeds of {', '.join(map(str, seeds))} that each method has finished (*seeds*).",
        "",
        "| method | seeds | " + " | ".join(names[p] for p in parts) + " |",
        "|---" * (len(parts) + 2) + "|",
    ]
    for m in methods:
        done = sum((m, "m0", s) in final for s in seeds)
        lines.append(f"| {m} | {done} | " + " | ".join(spread(final, m, p, seeds) for p in parts) + " |")
    if untuned:
        lines += [
            "",
            "Untuned (every weight 1, the committed study) beside tuned (each method's config selected on "
            "validation, retrained on every training image), test top-1 (%), mean ± std over the same seeds.",
            "",
            "| method | " + " | ".join(f"{names[p]} untuned | {names[p]} tuned" for p in parts) + " |",
            "|---" * (2 * len(parts) + 1) + "|",
        ]
        for m in methods:
            lines.append(
                f"| {m} | "
                + " | ".join(f"{spread(untuned, m, p, seeds)} | {spread(final, m, p, seeds)}" for p in parts)
                + " |"
            )
    lines += [
        "",
        "Paired differences (percentage points, method minus the other, seed by seed), with a paired-t "
        "95 % interval; *established* when the interval excludes zero. With this many comparisons some "
        f"intervals exclude zero by chance: *after BH* says whether it still holds when the false discovery "
        f"rate over all {len(diffs)} comparisons is held at 5 % (Benjamini-Hochberg q < 0.05).",
        "",
        "| comparison | method | part | against | mean | 95 % interval | established | p | after BH |",
        "|---" * 9 + "|",
    ]
    for d in diffs:
        against = d["against"] + ("" if d["against_part"] == d["part"] else f" {d['against_part']}")
        lines.append(
            f"| {d['comparison']} | {d['method']} | {names.get(d['part'], d['part'])} | {against} | "
            f"{d['mean_diff']:+.2f} | [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] | {established(d)} | "
            f"{d['p']:.3f} | {survives(d)} |"
        )
    return "\n".join(lines) + "\n"


def curves(rows: list[dict], methods: list[str]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(method, part) -> [(epoch, mean test top-1 over seeds)]."""
    acc: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        if r.get("test_top1") is not None:
            acc.setdefault((r["method"], part_key(r), r["epoch"]), []).append(r["test_top1"])
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for (method, part, epoch), values in sorted(acc.items(), key=lambda kv: kv[0][2]):
        out.setdefault((method, part), []).append((epoch, statistics.mean(values)))
    return {k: v for k, v in out.items() if k[0] in methods}


def plot_curves(curve: dict, methods: list[str], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), dpi=110)
    axes = figure.subplots(1, 3, sharey=True)
    for ax, part in zip(axes, ("m0", "m1", "ensemble")):
        for method in methods:
            if (method, part) in curve:
                xs, ys = zip(*curve[method, part])
                ax.plot(xs, ys, marker=".", label=method, linewidth=2.5 if method == "vanilla" else 1.2)
        ax.set_title(f"{part}: test top-1, mean over seeds")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test top-1 (%)")
    axes[-1].legend(fontsize="small")
    figure.suptitle("Fashion-MNIST study: test top-1 per epoch (vanilla bold)")
    figure.tight_layout()
    figure.savefig(path)


def plot_differences(diffs: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    shown = [d for d in diffs if d["comparison"] == "vs vanilla"]
    figure = Figure(figsize=(7, 0.28 * len(shown) + 1.2), dpi=110)
    ax = figure.subplots()
    for i, d in enumerate(shown):
        ax.errorbar(
            d["mean_diff"],
            i,
            xerr=[[d["mean_diff"] - d["ci_low"]], [d["ci_high"] - d["mean_diff"]]],
            fmt="o",
            color="tab:blue" if established(d) == "yes" else "tab:gray",
            capsize=3,
        )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(shown)), [f"{d['method']} {d['part']}" for d in shown], fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("difference to vanilla (points), paired 95 % interval")
    ax.set_title("Each method minus vanilla, seed by seed (blue: interval excludes 0)")
    figure.tight_layout()
    figure.savefig(path)


def sweep_costs(methods: list[str], kept: Path) -> list[dict]:
    """Per kept sweep: trials, epochs run over all trials, wall seconds, the selected trial and its validation
    score and values."""
    costs = []
    for method in methods:
        folder = kept / sweep_name(method)
        if method == "vanilla" or not (folder / "best_config.yaml").exists():
            continue
        trials = pq.read_table(folder / "trials.parquet").to_pylist()
        best = next(t for t in trials if t["best"])
        cost = json.loads((folder / "cost.json").read_text())
        costs.append(
            {
                "method": method,
                "trials": len(trials),
                "epochs_run": sum(t["epochs"] for t in trials),
                "seconds": cost["seconds"],
                "jobs": cost["jobs"],
                "best_trial": best["trial_id"],
                "best_mean_val_top1": best["mean_val_top1"],
                **{k: v for k, v in best.items() if k.startswith("config/")},
            }
        )
    return costs


def report(
    methods: list[str],
    seeds: list[int],
    runs: Path,
    out: Path,
    overrides: list[str] = (),
    kept: Path | None = None,
    untuned: Path | None = None,
) -> str:
    rows = collect(methods, seeds, runs, overrides, kept)
    final = final_top1(rows)
    before = final_top1(pq.read_table(untuned).to_pylist()) if untuned else None
    diffs = differences(final, methods, seeds, before)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(union_table(rows), out.with_suffix(".parquet"))  # every method's loss columns
    pq.write_table(union_table(diffs), out.parent / f"{out.name}_intervals.parquet")
    text = markdown(final, diffs, rows, methods, seeds, before)
    if kept is not None:
        costs = sweep_costs(methods, kept)
        pq.write_table(union_table(costs), out.parent / f"{out.name}_sweeps.parquet")
        text += (
            "\nSweeps (okd-ray tune, Optuna TPE + ASHA, selecting on mean_val_top1):\n\n"
            + "\n".join(
                f"- {c['method']}: {c['trials']} trials, {c['epochs_run']} epochs in all, {c['seconds'] / 60:.0f} min "
                f"({c['jobs']} trials at once); selected {c['best_trial']} "
                f"(mean_val_top1 {c['best_mean_val_top1']:.2f}): "
                + ", ".join(
                    f"{k.removeprefix('config/')}={v:.3g}"
                    if isinstance(v, float)
                    else f"{k.removeprefix('config/')}={v}"
                    for k, v in c.items()
                    if k.startswith("config/")
                )
                for c in costs
            )
            + "\n"
        )
    out.with_suffix(".md").write_text(text)
    plot_curves(curves(rows, methods), methods, out.parent / f"{out.name}_curves.png")
    plot_differences(diffs, out.parent / f"{out.name}_differences.png")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--runs", default="runs/study-fashion-mnist", help="where the runs' folders go")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (one torch thread each)")
    parser.add_argument("--out", default=str(HERE / "results" / "study_fashion_mnist"), help="results prefix")
    parser.add_argument("--report-only", action="store_true", help="no training: the report of the runs there are")
    parser.add_argument("--tune", action="store_true", help="sweep each method first, then retrain what it selected")
    parser.add_argument("--trials", type=int, default=8, help="trials per sweep (with --tune)")
    parser.add_argument(
        "--untuned",
        default=str(HERE / "results" / "study_fashion_mnist.parquet"),
        help="the untuned study's runs, set beside the tuned ones (with --tune)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value for every run (the same budget for all methods)")
    args = parser.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    if args.tune:  # the tuned study's own folders and results, beside the untuned ones
        runs = runs.with_name(runs.name + "-tuned") if args.runs == parser.get_default("runs") else runs
        out = out.with_name(out.name + "_tuned") if args.out == parser.get_default("out") else out
    kept = out.parent / f"{out.name}_sweeps" if args.tune else None  # committed: the retrains start from these
    if not args.report_only:
        if args.tune:
            tune(args.methods, runs / "sweeps", kept, args.overrides, args.trials, args.jobs)
        run_study(args.methods, args.seeds, runs, args.overrides, args.jobs, kept)
    print(report(args.methods, args.seeds, runs, out, args.overrides, kept, Path(args.untuned) if args.tune else None))


if __name__ == "__main__":
    main()

"""``okd-ray report``: a table, plots and a Markdown summary of a run's or a sweep's folder.

A run folder (either engine) holds ``metrics.parquet``; a sweep folder (``okd-ray tune``) ``trials.parquet`` and
``search.yaml``. The report goes to the folder's ``report/``, replaced whole each time, local or on ``s3://``/``gs://``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import yaml
from rich.console import Console

from okd_ray.errors import ConfigError
from okd_ray.metrics import columns, loss_columns
from okd_ray.storage import RunStore
from okd_ray.terminal import console as plain_console
from okd_ray.terminal import fitted_table, short_names

REPORT = "report"  # the report's own folder inside the run or sweep folder
SEARCH = "search.yaml"  # a sweep's metric, mode, number of trials and search space, written by okd-ray tune
RUN_COLUMNS = ["part", "val_top1", "val_top5", "test_top1", "test_top5", "train_top1"]


@dataclass
class Report:
    header: list[str]
    rows: list[list]  # the table, as written to report.md
    images: dict[str, object] = field(default_factory=dict)  # file name -> matplotlib figure
    first: str = ""  # a line that must come before anything else (selection on the test set)
    notes: list[str] = field(default_factory=list)  # lines after the table

    def markdown(self, title: str) -> str:
        lines = [f"**{self.first}**", ""] if self.first else []
        lines += [f"# {title}", "", "| " + " | ".join(self.header) + " |", "|---" * len(self.header) + "|"]
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in self.rows]
        lines += [""] + [f"{note}\n" for note in self.notes] + [f"![{name}]({name})" for name in self.images]
        return "\n".join(lines) + "\n"


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
    return "" if value is None else str(value)


def make_report(folder: str, console: Console | None = None) -> Report:
    """Write ``report/report.md`` and its PNGs into ``folder`` (replacing an earlier report) and print the table."""
    store = RunStore(folder)
    if store.exists("metrics.parquet"):
        report = run_report(store.read_table("metrics.parquet").to_pylist())
        title = f"run {folder}"
    elif store.exists("trials.parquet"):
        search = yaml.safe_load(store.read_text(SEARCH)) if store.exists(SEARCH) else {}
        report = sweep_report(store.read_table("trials.parquet").to_pylist(), search)
        title = f"sweep {folder}"
    else:
        raise ConfigError(
            f"{folder}: neither metrics.parquet (a run) nor trials.parquet (a sweep) is there; "
            "give the folder okd-ray train or okd-ray tune printed at its end"
        )
    store.delete(REPORT)
    store.write_text(f"{REPORT}/report.md", report.markdown(title))
    for name, figure in report.images.items():
        _save(store, figure, f"{REPORT}/{name}")
    console = console or plain_console()
    if report.first:
        console.print(report.first, style="bold red", soft_wrap=True)
    header = short_names(report.header)
    console.print(fitted_table(title, header, [[fmt(v) for v in row] for row in report.rows], left=("part", "trial")))
    for note in report.notes:
        console.print(note, soft_wrap=True)
    console.print(f"wrote {store.path(REPORT)}: report.md, {', '.join(report.images)}", soft_wrap=True)
    return report


def run_report(rows: list[dict]) -> Report:
    """The last epoch's accuracies (never the best epoch's); validation and test top-1 per epoch, train against
    test top-1, one panel per loss term (the terms are the columns metrics.parquet holds, so a new term needs no
    list here)."""
    last = max(r["epoch"] for r in rows)
    header = [c for c in RUN_COLUMNS if c in rows[0]]
    table = [[r[c] for c in header] for r in rows if r["epoch"] == last]
    run = rows[0]["run"]
    parts = list(dict.fromkeys(r["part"] for r in rows))

    def curve(ax, part: str, column: str, **style) -> None:
        points = [(r["epoch"], r[column]) for r in rows if r["part"] == part and r.get(column) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, **style)

    test = _figure()
    ax = test.subplots()
    validated = "val_top1" in rows[0]
    for i, part in enumerate(parts):
        curve(ax, part, "test_top1", color=f"C{i}", label=part)
        if validated:
            curve(ax, part, "val_top1", color=f"C{i}", linestyle=":", label=f"{part} validation")
    _axes(ax, f"{run}: test{' (solid) and validation (dotted)' if validated else ''} top-1 per epoch", "top-1 (%)")

    gap = _figure()
    ax = gap.subplots()
    trained = [p for p in parts if any(r["part"] == p and r.get("train_top1") is not None for r in rows)]
    for i, part in enumerate(trained):
        curve(ax, part, "train_top1", color=f"C{i}", label=f"{part} train")
        curve(ax, part, "test_top1", color=f"C{i}", linestyle="--", label=f"{part} test")
    _axes(ax, f"{run}: train (solid) against test (dashed) top-1", "top-1 (%)")

    terms = [c for c in loss_columns(columns(rows)) if any(r.get(c) is not None for r in rows)]
    cols = min(3, len(terms)) or 1
    losses = _figure(size=(4 * cols, 3 * math.ceil(len(terms) / cols) + 0.6))
    losses.suptitle(f"{run}: loss terms per epoch (training means)")
    for i, term in enumerate(terms):
        ax = losses.add_subplot(math.ceil(len(terms) / cols), cols, i + 1)
        for part in parts:
            curve(ax, part, term, label=part)
        _axes(ax, term, "mean over the epoch", fontsize="small")
    images = {"test_top1.png": test, "train_vs_test_top1.png": gap}
    if terms:
        images["loss_terms.png"] = losses
    return Report(header, table, images, notes=[f"Accuracies after the last epoch ({last}), never the best epoch's."])


def sweep_report(trials: list[dict], search: dict) -> Report:
    """The trials, best first; per searched key, the metric against its values (log axis for loguniform keys,
    one category per choice), early-stopped trials hollow, the best trial a star."""
    space = search.get("search", {})
    keys = sorted({k for t in trials for k in t if k.startswith("config/")})
    metric = (
        search.get("metric")
        or [
            next(
                m
                for m in ("mean_val_top1", "mean_test_top1", "fused_test_top1", "best_test_top1")
                if any(m in t for t in trials)
            )
        ]
    )[0]
    trials = rank_trials(trials, metric, (search.get("mode") or ["max"])[0])
    first = TEST_SELECTION_WARNING if "test_top" in metric else ""
    best = next((t for t in trials if t.get("best")), None)
    notes = [note for note in [chosen_test_result(best, metric)] if note] if best is not None else []
    header = ["trial", *[k.removeprefix("config/") for k in keys], "epochs", "status", metric]
    table = [
        [
            t["trial_id"] + (" *" if t.get("best") else ""),
            *[t.get(k) for k in keys],
            t["epochs"],
            t.get("status"),
            t.get(metric),
        ]
        for t in trials
    ]
    images = {}
    for key in keys:
        name = key.removeprefix("config/")
        kind, args = next(iter(space.get(name, {"uniform": None}).items()))
        scored = [t for t in trials if t.get(key) is not None and not math.isnan(number(t.get(metric)))]
        if not scored:
            continue
        figure = _figure()
        ax = figure.subplots()
        categories = list(dict.fromkeys([*(args if kind == "choice" else []), *(t[key] for t in scored)]))
        position = {id(t): categories.index(t[key]) if kind == "choice" else t[key] for t in scored}
        for label, status, style in (
            ("finished", "done", {}),
            ("stopped early", "stopped", {"facecolors": "none"}),
            ("unfinished", "unfinished", {"marker": "x"}),
        ):
            points = [(position[id(t)], t[metric]) for t in scored if t.get("status") == status]
            if points:
                ax.scatter(*zip(*points), label=label, **{"marker": "o", "edgecolors": "C0", "color": "C0", **style})
        best = [t for t in scored if t.get("best")]
        if best:
            ax.scatter(
                [position[id(best[0])]],
                [best[0][metric]],
                marker="*",
                s=250,
                color="C3",
                zorder=3,
                label=f"best: {best[0]['trial_id']}",
            )
        if kind == "loguniform":
            ax.set_xscale("log")
        elif kind == "choice":
            ax.set_xticks(range(len(categories)), [str(c) for c in categories])
            ax.set_xlim(-0.5, len(categories) - 0.5)
        _axes(ax, f"{metric} against {name}", metric, f"{name} ({kind})", integer_x=kind == "int")
        images[f"{metric}_vs_{name.replace('.', '_')}.png"] = figure
    return Report(header, table, images, first=first, notes=notes)


TEST_SELECTION_WARNING = (
    "Selection was on the test set (--select-on-test): the best trial's accuracy is optimistic, not a result to report."
)


def chosen_test_result(best: dict, metric: str) -> str:
    """The selected trial's test accuracy, labelled as the test result of the configuration chosen on validation;
    empty when the sweep selected on something else."""
    test = metric.replace("val_top", "test_top")
    if test == metric or test not in best:
        return ""
    return (
        f"Test result of the configuration chosen on validation (trial {best['trial_id']}, last epoch): "
        f"{test} {fmt(best.get(test))}."
    )


def rank_trials(trials: list[dict], metric: str, mode: str) -> list[dict]:
    """Best first by ``metric`` (``mode`` max or min); trials with no number for it (diverged, failed) last."""

    def key(trial: dict) -> tuple[bool, float]:
        value = number(trial.get(metric))
        return math.isnan(value), -value if mode == "max" else value

    return sorted(trials, key=key)


def number(value) -> float:
    return value if isinstance(value, (int, float)) and not math.isnan(value) else float("nan")


def _axes(
    ax, title: str, ylabel: str, xlabel: str = "epoch", fontsize: str | None = None, integer_x: bool = True
) -> None:
    ax.set_title(title, fontsize=fontsize)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if integer_x:
        ax.xaxis.get_major_locator().set_params(integer=True)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize or "small")


def _figure(size: tuple[float, float] = (6.4, 4.2)):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    return Figure(figsize=size, dpi=110)


def _save(store: RunStore, figure, name: str) -> None:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    store.write_bytes(name, buffer.getvalue())

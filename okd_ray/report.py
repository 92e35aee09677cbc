"""``okd-ray report``: a table, plots and a Markdown summary of a run's or a sweep's folder.

A run folder (either engine) holds ``metrics.parquet``; a sweep folder (``okd-ray tune``) ``trials.parquet``.
Everything is written beside them, local or on ``s3://``/``gs://``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from okd_ray.errors import ConfigError
from okd_ray.storage import RunStore

SEARCH = "search.yaml"  # a sweep's metric, mode, number of trials and search space, written by okd-ray tune
RUN_COLUMNS = ["part", "test_top1", "test_top5", "train_top1", "ce"]


@dataclass
class Report:
    kind: str  # "run" or "sweep"
    header: list[str]
    rows: list[list]  # the table, as written to report.md
    images: list[str]

    def markdown(self, title: str) -> str:
        lines = [f"# {title}", "", "| " + " | ".join(self.header) + " |", "|---" * len(self.header) + "|"]
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in self.rows]
        lines += [""] + [f"![{name}]({name})" for name in self.images]
        return "\n".join(lines) + "\n"


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
    return "" if value is None else str(value)


def make_report(folder: str, console: Console | None = None) -> Report:
    """Write ``report.md`` and PNGs into ``folder`` and print the table."""
    store = RunStore(folder)
    if store.exists("metrics.parquet"):
        report = run_report(store)
        title = f"run {folder}"
    elif store.exists("trials.parquet"):
        report = sweep_report(store)
        title = f"sweep {folder}"
    else:
        raise ConfigError(f"{folder}: neither metrics.parquet (a run) nor trials.parquet (a sweep) is there; "
                          "give the folder okd-ray train or okd-ray tune printed at its end")
    store.write_text("report.md", report.markdown(title))
    table = Table(title=title, title_justify="left")
    for column in report.header:
        table.add_column(column, justify="left" if column in ("part", "trial") else "right")
    for row in report.rows:
        table.add_row(*(fmt(v) for v in row))
    (console or Console()).print(table)
    (console or Console()).print(f"wrote {store.path('report.md')} and {', '.join(report.images)}", soft_wrap=True)
    return report


def run_report(store: RunStore) -> Report:
    rows = store.read_table("metrics.parquet").to_pylist()
    last = max(r["epoch"] for r in rows)
    final = [r for r in rows if r["epoch"] == last]
    table = [[r[c] for c in RUN_COLUMNS] for r in final]
    figure = _figure()
    ax = figure.subplots()
    for part in dict.fromkeys(r["part"] for r in rows):
        points = [(r["epoch"] + 1, r["test_top1"]) for r in rows if r["part"] == part]
        ax.plot(*zip(*points), marker="o", label=part)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize="small")
    _save(store, figure, "test_top1.png")
    return Report("run", RUN_COLUMNS, table, ["test_top1.png"])


def sweep_report(store: RunStore) -> Report:
    trials = store.read_table("trials.parquet").to_pylist()
    keys = sorted({k for t in trials for k in t if k.startswith("config/")})
    metric = next(m for m in ("mean_test_top1", "fused_test_top1", "best_test_top1") if any(m in t for t in trials))
    trials.sort(key=lambda t: t.get(metric) or float("-inf"), reverse=True)
    header = ["trial", *[k.removeprefix("config/") for k in keys], "epochs", metric]
    table = [[t["trial_id"], *[t.get(k) for k in keys], t["epochs"], t.get(metric)] for t in trials]
    images = []
    for key in keys:
        figure = _figure()
        ax = figure.subplots()
        points = [(t[key], t[metric]) for t in trials if isinstance(t.get(key), (int, float)) and t.get(metric) is not None]
        if not points:
            continue
        ax.scatter(*zip(*points))
        ax.set_xlabel(key.removeprefix("config/"))
        ax.set_ylabel(metric)
        name = f"{metric}_vs_{key.removeprefix('config/').replace('.', '_')}.png"
        _save(store, figure, name)
        images.append(name)
    return Report("sweep", header, table, images)


def _figure():
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    return Figure(figsize=(6, 4), dpi=110)


def _save(store: RunStore, figure, name: str) -> None:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    store.write_bytes(name, buffer.getvalue())

"""What a run shows in the terminal: a rich progress bar per epoch and a table per member."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from okd_ray.metrics import ACCURACY, loss_columns
from okd_ray.metrics import columns as columns_of
from okd_ray.terminal import console as plain_console

HEADERS = {
    "train_top1": "train@1",
    "val_top1": "val@1",
    "val_top5": "val@5",
    "test_top1": "test@1",
    "test_top5": "test@5",
}


class RunDisplay:
    """Progress bars only on an interactive terminal; the per-epoch table always (unless quiet)."""

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.console = console or plain_console()
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task = None

    def begin_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self.quiet or not self.console.is_terminal:
            return
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps)

    def advance(self, steps: int = 1) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, steps)

    def stop(self) -> None:
        """End the epoch's progress bar, if one is shown (also when the epoch was interrupted)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def end_epoch(self, epoch: int, epochs: int, rows: list[dict], seconds: float) -> None:
        """One line per epoch (validation and test top-1 of every part); the full table after the last epoch."""
        self.stop()
        if self.quiet:
            return
        groups = [[f"epoch {epoch + 1}/{epochs} ({seconds:.1f} s)"]]
        for split in ("val", "test"):
            scores = [f"{r['part']} {r[f'{split}_top1']:.2f}" for r in rows if r.get(f"{split}_top1") is not None]
            groups += [[f"{split} top-1: {scores[0]}", *scores[1:]]] if scores else []
        for line in fitted_lines(groups, self.console.width):
            self.console.print(line, soft_wrap=True)
        if epoch + 1 == epochs:
            self.console.print(epoch_table(rows, f"after epoch {epoch + 1}"))

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, soft_wrap=True)


def fitted_lines(groups: list[list[str]], width: int) -> list[str]:
    """Groups of words, two spaces apart, in lines no wider than ``width``: a group that does not fit the line it
    would join starts a line of its own (indented), and no word (a part's name and its accuracy) is broken."""
    lines: list[str] = []
    for group in groups:
        if lines and len(lines[-1]) + 2 + len("  ".join(group)) > width:
            lines.append("  ")
        for word in group:
            if not lines:
                lines.append(word)
            elif lines[-1].strip() and len(lines[-1]) + 2 + len(word) > width:
                lines.append("  " + word)
            else:
                lines[-1] += ("  " if lines[-1].strip() else "") + word
    return lines


def epoch_table(rows: list[dict], title: str) -> Table:
    """Metrics down, parts across: a population has fewer parts than metrics, so the table fits 80 columns."""
    metrics = [c for c in loss_columns(columns_of(rows)) + ACCURACY if any(r.get(c) is not None for r in rows)]
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for row in rows:
        table.add_column(row["part"], justify="right", overflow="fold")
    for c in metrics:
        table.add_row(
            HEADERS.get(c, c),
            *("" if r.get(c) is None else f"{r[c]:.3f}" if "top" not in c else f"{r[c]:.2f}" for r in rows),
        )
    return table

"""Where a run's metrics go besides ``metrics.parquet``: the trackers that ``logging:`` names.

Every tracker gets the same values under the same tags, one per part and metric under its part key
(``m0/test_top1``, ``m1/ring_kl``, ``fused/lr_fusion``, ``ensemble/test_top1``): every epoch's row at the
epoch's number (from 1), and every ``log_every_steps``-th training step's loss terms and top-1 at the run's
global step. A tracker opens with the first value it gets, so a run that fails to start writes nothing, and a
run interrupted before its first epoch ended has what it wrote discarded. A new tracker is a module here
and a row of ``TRACKERS``.
"""

from __future__ import annotations

from typing import Protocol

from okd_ray.config import TrainConfig
from okd_ray.population import parts_of
from okd_ray.storage import RunStore

from .mlflow import MLflowTracker
from .tensorboard import TensorBoardTracker


class Tracker(Protocol):
    def __init__(self, config: TrainConfig, store: RunStore, first_step: int, first_epoch: int):
        """``first_step`` and ``first_epoch`` are the first this attempt logs (from 1): a resume writes on
        from its checkpoint."""

    def log(self, kind: str, values: dict[str, float], step: int) -> None:
        """``values`` by tag at ``step``; ``kind`` is ``epochs`` or ``steps``."""

    def flush(self) -> None: ...

    def close(self, status: str) -> None:
        """The attempt ended: ``finished``, ``interrupted`` or ``failed``."""

    def discard(self) -> None:
        """Remove what this attempt wrote (a run interrupted before its first epoch ended leaves nothing)."""


TRACKERS: dict[str, type[Tracker]] = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker}


def check_trackers(config: TrainConfig, store: RunStore) -> None:
    """Each named tracker's own check (its package, where it writes), before any work starts."""
    for name in config.logging:
        check = getattr(TRACKERS[name], "check", None)
        if check is not None:
            check(store)


def step_values(metrics: dict[str, float]) -> dict[str, float]:
    """One step's metrics of a part (loss terms, correct count, batch size) as a row shows them."""
    values = {k: v for k, v in metrics.items() if k not in ("n", "train_correct")}
    if "train_correct" in metrics:
        values["train_top1"] = 100.0 * metrics["train_correct"] / metrics["n"]
    return values


class Trackers:
    """The trackers ``config.logging`` names, fed the same tagged values; with none, every call does nothing."""

    def __init__(self, config: TrainConfig, store: RunStore, start_epoch: int, steps_per_epoch: int):
        self.config = config
        self.parts = parts_of(config)
        self.keys = {p.name: p.key for p in self.parts}  # other rows (ensemble, teacher): name and key agree
        self.step = start_epoch * steps_per_epoch  # steps done before this call
        self.trackers = [TRACKERS[name](config, store, self.step + 1, start_epoch + 1) for name in config.logging]

    def log_steps(self, steps: list[list[dict[str, float]]]) -> None:
        """An epoch's training steps' metrics, each in ``parts_of`` order."""
        for metrics in steps:
            self.step += 1
            every = self.config.log_every_steps
            if not self.trackers or not every or self.step % every:
                continue
            values = {
                f"{pid.key}/{name}": value
                for pid, part in zip(self.parts, metrics)
                for name, value in (step_values(part) if part else {}).items()
            }
            for tracker in self.trackers:
                tracker.log("steps", values, self.step)

    def log_epoch(self, epoch: int, rows: list[dict]) -> None:
        """Epoch ``epoch``'s rows (from 1), as ``metrics.parquet`` holds them."""
        values = {
            f"{self.keys.get(row['part'], row['part'])}/{name}": value
            for row in rows
            for name, value in row.items()
            if isinstance(value, float)
        }
        for tracker in self.trackers:
            tracker.log("epochs", values, epoch)
            tracker.flush()

    def close(self, status: str) -> None:
        for tracker in self.trackers:
            tracker.close(status)

    def discard(self) -> None:
        for tracker in self.trackers:
            tracker.discard()

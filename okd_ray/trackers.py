"""Where a run's metrics go besides ``metrics.parquet``: the trackers that ``logging:`` names.

``tensorboard``: events in the run folder's ``tensorboard/``, one tag per part and metric under its part key
(``m0/test_top1``, ``m1/ring_kl``, ``fused/lr_fusion``, ``ensemble/test_top1``). ``tensorboard/epochs`` has
every epoch's row (loss terms, accuracies, learning rates, seconds) at the epoch's number (from 1);
``tensorboard/steps`` every ``log_every_steps``-th training step's loss terms and top-1 at the run's global
step. A resumed run writes on from its checkpoint and purges what a longer, lost attempt wrote after it.
"""

from __future__ import annotations

from typing import Any

from okd_ray.config import TrainConfig
from okd_ray.population import parts_of
from okd_ray.storage import RunStore

FOLDER = "tensorboard"


def step_values(metrics: dict[str, float]) -> dict[str, float]:
    """One step's metrics of a part (loss terms, correct count, batch size) as a row shows them."""
    values = {k: v for k, v in metrics.items() if k not in ("n", "train_correct")}
    return {**values, "train_top1": 100.0 * metrics["train_correct"] / metrics["n"]}


class Trackers:
    """The trackers ``config.logging`` names; with none, every call does nothing. Writers open with the first
    value they get, so a run that fails to start writes nothing."""

    def __init__(self, config: TrainConfig, store: RunStore, start_epoch: int, steps_per_epoch: int):
        self.config, self.store = config, store
        self.parts = parts_of(config)
        self.keys = {p.name: p.key for p in self.parts}  # other rows (ensemble, teacher): name and key agree
        self.start_epoch, self.step = start_epoch, start_epoch * steps_per_epoch  # steps done before this call
        self.writers: dict[str, Any] = {}  # kind -> its SummaryWriter

    def writer(self, kind: str, first: int):
        """The SummaryWriter of ``kind`` (epochs, steps), purging what an earlier attempt wrote from ``first`` on."""
        if kind not in self.writers:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only for runs that use it

            self.writers[kind] = SummaryWriter(f"{self.store.address}/{FOLDER}/{kind}", purge_step=first)
        return self.writers[kind]

    def log_step(self, metrics: list[dict[str, float]]) -> None:
        """One training step's metrics, in ``parts_of`` order."""
        self.step += 1
        every = self.config.log_every_steps
        if "tensorboard" not in self.config.logging or not every or self.step % every:
            return
        writer = self.writer("steps", self.step)
        for pid, values in zip(self.parts, metrics):
            for name, value in (step_values(values) if values else {}).items():
                writer.add_scalar(f"{pid.key}/{name}", value, self.step)

    def log_epoch(self, epoch: int, rows: list[dict]) -> None:
        """Epoch ``epoch``'s rows (from 1), as ``metrics.parquet`` holds them."""
        if "tensorboard" not in self.config.logging:
            return
        writer = self.writer("epochs", self.start_epoch + 1)
        for row in rows:
            for name, value in row.items():
                if isinstance(value, float):
                    writer.add_scalar(f"{self.keys.get(row['part'], row['part'])}/{name}", value, epoch)
        for opened in self.writers.values():
            opened.flush()

    def close(self) -> None:
        for opened in self.writers.values():
            opened.close()

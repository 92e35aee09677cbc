"""``logging: [tensorboard]``: events in the run folder's ``tensorboard/epochs`` and ``tensorboard/steps``, with
PyTorch's own writer. A resumed run purges what a longer, lost attempt wrote after its checkpoint."""

from __future__ import annotations

from typing import Any

from okd_ray.config import TrainConfig
from okd_ray.storage import RunStore

FOLDER = "tensorboard"


class TensorBoardTracker:
    def __init__(self, config: TrainConfig, store: RunStore, first_step: int, first_epoch: int):
        self.store, self.first = store, {"steps": first_step, "epochs": first_epoch}
        self.writers: dict[str, Any] = {}  # kind -> its SummaryWriter

    def log(self, kind: str, values: dict[str, float], step: int) -> None:
        if kind not in self.writers:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only for runs that use it

            self.writers[kind] = SummaryWriter(f"{self.store.address}/{FOLDER}/{kind}", purge_step=self.first[kind])
        for tag, value in values.items():
            self.writers[kind].add_scalar(tag, value, step)

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    def close(self, status: str) -> None:
        for writer in self.writers.values():
            writer.close()

    def discard(self) -> None:
        self.close("interrupted")
        self.store.delete(FOLDER)

"""``logging: [tensorboard]``: events in the run folder's ``tensorboard/epochs`` and ``tensorboard/steps``, with
PyTorch's own writer. A resumed run purges what a longer, lost attempt wrote after its checkpoint."""

from __future__ import annotations

import contextlib
import signal
import threading
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

            with signals_deferred():
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


@contextlib.contextmanager
def signals_deferred():
    """Ctrl-C or SIGTERM during the block takes effect when it ends. A SummaryWriter starts its event thread
    before its constructor returns: interrupted in between, the writer is never closed, and its thread goes on
    writing into the folder that ``discard`` is deleting. Signals reach the main thread only; elsewhere (a Tune
    trial's thread) there is nothing to defer."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {
        number: signal.signal(number, lambda number, frame: caught.append(number))
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in caught[:1]:
            signal.raise_signal(number)  # to the handler that was there before: KeyboardInterrupt, Terminated

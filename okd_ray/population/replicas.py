"""A part as D replicas (``members.N.replicas``): data parallel, with DDP's semantics, made exact.

Replica r takes share r of every batch (``shard``) and meets replica r of the other parts, so the population runs
as D shards of itself. Before every optimizer step the part's replicas average their gradients (``average``): each
gathers every replica's, sums them in replica order and divides by D, so every replica, in either engine, steps
on the very same bits and the replicas stay identical. After each step they average their float buffers (batch
norm's running statistics) the same way: each replica normalises with its own share's statistics, as in DDP, and
the running statistics are the replicas' mean. How the gradients are gathered is the engine's: through a process
group between actors (``torch.distributed``), or here between threads of one process (``Rendezvous``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .protocol import EpochLog

Gather = Callable[[torch.Tensor], list[torch.Tensor]]  # this replica's tensor -> every replica's, in replica order


def shard(batch: Sequence[torch.Tensor], replica: int, replicas: int) -> tuple[torch.Tensor, ...]:
    """Replica ``replica``'s share of a batch (images, labels, ids): ``torch.tensor_split``'s, the first shares one
    sample larger where the batch does not divide."""
    return tuple(batch) if replicas == 1 else tuple(t.tensor_split(replicas)[replica] for t in batch)


def average(tensors: list[torch.Tensor], gather: Gather) -> None:
    """Each tensor replaced in place by its mean over the replicas: one flat buffer per dtype gathered whole, the
    replicas' summed in replica order, divided by their number."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        gathered = gather(torch.cat([t.reshape(-1) for t in group]))
        total = gathered[0]
        for other in gathered[1:]:
            total = total + other
        mean = total / len(gathered)
        offset = 0
        for t in group:
            t.copy_(mean[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def merge_replicas(logs: Sequence[EpochLog]) -> EpochLog:
    """One part's epoch from its replicas' logs: each step's loss terms weighted by the replicas' batch shares,
    correct counts and batch sizes summed (in replica order); the earliest value that was not finite."""
    if len(logs) == 1:
        return logs[0]
    steps = []
    for replicas in zip(*(log.steps for log in logs), strict=True):
        if not replicas[0]:
            steps.append({})
            continue
        n = sum(r["n"] for r in replicas)
        merged: dict[str, Any] = {
            k: sum(r[k] * r["n"] for r in replicas) / n for k in replicas[0] if k not in ("n", "train_correct")
        }
        if "train_correct" in replicas[0]:
            merged["train_correct"] = sum(r["train_correct"] for r in replicas)
        steps.append({**merged, "n": n})
    diverged = [log.diverged for log in logs if log.diverged is not None]
    return EpochLog(steps, min(diverged, key=lambda e: e.step) if diverged else None)


class Baton:
    """The local engine runs each shard's step in a thread of its own, and one thread computes at a time (a part
    swaps torch's global RNG state in and out): a replica that waits for the others hands the baton on."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rendezvous: list[Rendezvous] = []

    def run(self, steps: list[Callable[[], Any]]) -> None:
        """Each of ``steps`` in its own thread, to the end; the first error (by shard) is raised here, and the
        others, waiting for a replica that failed, are released."""
        errors: list[BaseException | None] = [None] * len(steps)

        def run(i: int) -> None:
            try:
                with self.lock:
                    steps[i]()
            except BaseException as e:  # noqa: BLE001 - handed to the engine's thread
                errors[i] = e
                for r in self.rendezvous:
                    r.barrier.abort()

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(steps))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        first = next(
            (e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)),
            next((e for e in errors if e is not None), None),
        )
        if first is not None:
            for r in self.rendezvous:
                r.barrier.reset()
            raise first

    def rendezvous_for(self, replicas: int) -> Rendezvous:
        """Where the ``replicas`` replicas of one part gather."""
        self.rendezvous.append(Rendezvous(replicas, self.lock))
        return self.rendezvous[-1]


class Rendezvous:
    def __init__(self, replicas: int, baton: threading.Lock):
        self.slots: list[torch.Tensor | None] = [None] * replicas
        self.barrier = threading.Barrier(replicas)
        self.baton = baton

    def gather(self, replica: int, value: torch.Tensor) -> list[torch.Tensor]:
        """Every replica's ``value``, once all have given theirs; the baton is free meanwhile, and the caller's
        RNG state is as it left it."""
        self.slots[replica] = value
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None
        self.baton.release()
        try:
            self.barrier.wait()  # every replica has given its value
            values = list(self.slots)
            self.barrier.wait()  # every replica has taken them: the next gather may overwrite
        finally:
            self.baton.acquire()
            torch.set_rng_state(rng)
            if cuda:
                torch.cuda.set_rng_state_all(cuda_rng)
        return values

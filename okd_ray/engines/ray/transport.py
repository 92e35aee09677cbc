"""How one population step's tensors move between the part actors: one module per transport, behind the
protocol written once here, and one row of ``TRANSPORTS`` (``engine.py``).

A transport is built once the actors are up; it runs an epoch's population steps (``run``), handing back each
step's done markers in ``parts_of`` order as it ends (the metrics stay with the parts until the epoch ends), and
tears down after the actors are gone (``close``). ``check`` refuses a placement it cannot serve before anything
is reserved.
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from okd_ray.methods import Need
from okd_ray.population import PartId

Bundles = list[dict[str, float]]  # one resource bundle per part, in parts_of order
STEPS_IN_FLIGHT = 2  # the driver submits this many steps ahead before it waits for a step


@dataclass(frozen=True)
class ShardParts:
    """One shard of the population: replica r of every part that has one (every part, without replicas), as
    actors in ``parts_of`` order, with the parts' ids and the actors' ranks among all the population's actors
    (their places in its process group)."""

    actors: list
    ids: list[PartId]
    ranks: list[int]


class Transport(Protocol):
    keeps_hosts: bool  # after a clean end and ``close``, its actors may host the next population

    @staticmethod
    def check(bundles: Bundles) -> None:
        """Raise ConfigError for a placement this transport cannot serve."""

    def __init__(self, shards: list[ShardParts], members: int, needs: frozenset[Need], bundles: Bundles):
        """Set up over started actors (a collective group, a compiled graph); errors surface as the actors'. Every
        shard runs the population step; the replicas of a part meet in its optimizer steps."""

    def run(self, steps: int) -> Iterator[list]:
        """``steps`` population steps; each step's done markers (its index), one per part and shard."""

    def close(self) -> None:
        """Tear down what the transport made: after a clean end with the actors still up where it ``keeps_hosts``
        (they then host the next population), otherwise once they are gone."""


class DriverSteps(abc.ABC):
    """For transports whose driver starts every step (``submit``) and waits for it (``result``), keeping
    ``STEPS_IN_FLIGHT`` steps ahead of the one it waits for."""

    @abc.abstractmethod
    def submit(self) -> Any:
        """Start the next population step; returns what ``result`` waits on."""

    @abc.abstractmethod
    def result(self, future: Any) -> list:
        """The step's done markers, one per part and shard, once it has ended."""

    def run(self, steps: int) -> Iterator[list]:
        pending = collections.deque()
        for _ in range(steps):
            pending.append(self.submit())
            if len(pending) > STEPS_IN_FLIGHT:
                yield self.result(pending.popleft())
        while pending:
            yield self.result(pending.popleft())


def gpu_shares(bundles: Bundles) -> list[float]:
    return [b.get("GPU", 0) for b in bundles]


def auto_transport(bundles: Bundles) -> str:
    """``direct`` where the parts are on GPUs: NCCL with a GPU each, CUDA IPC where they share one (neither is
    measured yet: the one GPU lent here had each part on a share, where the compiled graph beat object_store
    through host memory, and CUDA IPC copies nothing at all); on CPUs, ``collective``, the fastest at every K that
    ``experiments/bench_scaling.py`` measured, with a sixteenth of the driver's CPU or less (README, "What the
    engines cost")."""
    return "direct" if any(gpu_shares(bundles)) else "collective"

"""Engines: where the population lives (one process, or one Ray actor per part) and how tensors move.

Every engine drives the same population step over the same parts; the run loop (``okd_ray.run``) sees
only the ``Engine`` protocol below.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

from okd_ray.checkpoint import Checkpoint, Shard
from okd_ray.config import TrainConfig
from okd_ray.data.base import Split
from okd_ray.population import PopulationPlan
from okd_ray.population.protocol import Metrics
from okd_ray.storage import RunStore

__all__ = ["Engine", "PartMetrics", "connect", "make_engine", "part_bundles", "release_hosts", "watching"]

PartMetrics = dict[str, dict[str, float]]  # part name -> metric -> value


class Engine(Protocol):
    def begin_epoch(self, epoch: int) -> PartMetrics:
        """Set the epoch's learning rates and schedules; returns each part's learning rates."""

    def train_epoch(self, steps: int, on_step: Callable[[], None]) -> list[list[Metrics]]:
        """Run ``steps`` population steps, calling ``on_step`` as each ends (on a GPU, once its work is queued);
        returns each step's metrics in ``parts_of`` order, read from the parts once, when the epoch ends (a value
        that was not finite raises TrainingDiverged, naming its step)."""

    def evaluate(self, split: Split) -> PartMetrics:
        """Top-1/top-5 on ``split`` (validation or test) of every member, the ensemble and the fused classifier."""

    def placement(self) -> dict:
        """Where each part runs (node, placement group, bundle), as the parts report it; empty for one process."""

    def save(self, store: RunStore, folder: str) -> dict[str, Shard]:
        """Every part writes its checkpoint shard into ``folder`` of the run's storage; part key -> its shard."""

    def load(self, store: RunStore, checkpoint: Checkpoint) -> None:
        """Every part loads its shard of ``checkpoint``, checked first (CheckpointDamaged names a bad one)."""

    def close(self) -> None: ...


def __getattr__(name: str):
    """``connect`` and ``part_bundles`` (for okd-ray tune) import Ray, which a local run never needs."""
    if name in ("connect", "part_bundles"):
        from . import resources

        return getattr(resources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def release_hosts() -> None:
    """Give the cluster back every warm part host (and placement group) this process keeps idle for its next Ray
    population (``ray.keep_hosts_s``): before other processes or Tune's trials need the room."""
    import sys

    hosts = sys.modules.get("okd_ray.engines.ray.hosts")  # none kept where the Ray engine never ran
    if hosts is not None:
        hosts.POOL.release()


def watching(config: TrainConfig, lost: Callable[[str, float], str]) -> contextlib.AbstractContextManager:
    """While a run trains: on Ray, the watch that ends it, printing ``lost(address, seconds)``, within
    ``ray.cluster_lost_s`` of its cluster's head going away (``ray/lost.py``)."""
    if config.engine != "ray" or not config.ray.cluster_lost_s:
        return contextlib.nullcontext()
    from .ray.lost import ClusterWatch

    return ClusterWatch(config.ray.cluster_lost_s, lost)


def make_engine(config: TrainConfig, plan: PopulationPlan) -> Engine:
    if config.engine == "ray":
        from .ray import RayEngine  # Ray's import costs seconds: only when asked for

        return RayEngine(config, plan)
    from .local import LocalEngine

    return LocalEngine(config, plan)

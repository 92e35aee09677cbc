"""The local engine: the whole population in one process, the reference every other engine must match."""

from __future__ import annotations

from collections.abc import Callable

import torch

from okd_ray.checkpoint import Checkpoint, Shard, shard_path
from okd_ray.config import TrainConfig
from okd_ray.data.base import Split
from okd_ray.metrics import accuracy
from okd_ray.population import (Population, PopulationPlan, build_part, epoch_metrics, parts_of, population_eval,
                                population_step)
from okd_ray.population.protocol import Metrics
from okd_ray.storage import RunStore


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class LocalEngine:
    def __init__(self, config: TrainConfig, plan: PopulationPlan):
        device = resolve_device(config.device)
        self.threads_before = torch.get_num_threads()
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.config, self.plan = config, plan
        self.ids = parts_of(config)
        try:
            self.parts = [build_part(spec, device) for spec in plan.specs]
        except BaseException:  # the process's thread count goes back as it was
            self.close()
            raise
        self.population = Population.of(self.ids, self.parts, config.method.method.needs)

    def begin_epoch(self, epoch: int) -> dict[str, dict[str, float]]:
        return {pid.name: part.begin_epoch(epoch) for pid, part in zip(self.ids, self.parts)}

    def train_epoch(self, steps: int, on_step: Callable[[], None]) -> list[list[Metrics]]:
        for _ in range(steps):
            population_step(self.population)
            on_step()
        return epoch_metrics([part.end_epoch() for part in self.parts])

    def evaluate(self, split: Split) -> dict[str, dict[str, float]]:
        for part in self.parts:
            part.begin_eval(split)
        batches = population_eval(self.population, self.plan.num_eval_batches[split])
        return accuracy(batches, [pid.name for pid in self.ids if pid.kind == "member"], split)

    def placement(self) -> dict:
        return {}  # one process

    def save(self, store: RunStore, folder: str) -> dict[str, Shard]:
        return {pid.key: part.save(store.address, shard_path(folder, pid.key))
                for pid, part in zip(self.ids, self.parts)}

    def load(self, store: RunStore, checkpoint: Checkpoint) -> None:
        for pid, part in zip(self.ids, self.parts):
            part.load(store.address, shard_path(checkpoint.folder, pid.key), checkpoint.shards[pid.key])

    def close(self) -> None:
        torch.set_num_threads(self.threads_before)

"""The local engine: the whole population in one process, the reference every other engine must match."""

from __future__ import annotations

from collections.abc import Callable

import torch

from okd_ray.checkpoint import Checkpoint, Shard
from okd_ray.config import TrainConfig
from okd_ray.data.base import Split
from okd_ray.metrics import accuracy
from okd_ray.population import (
    Population,
    PopulationPlan,
    build_part,
    epoch_metrics,
    parts_of,
    population_eval,
    population_step,
)
from okd_ray.population.protocol import Metrics
from okd_ray.population.replicas import Baton, merge_replicas
from okd_ray.population.spec import replica_specs
from okd_ray.population.watch import Watched
from okd_ray.storage import RunStore


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class LocalEngine:
    """Parts with replicas run as shards of the population (shard r: replica r of every part), each shard's step in
    a thread of its own, one computing at a time (``Baton``)."""

    def __init__(self, config: TrainConfig, plan: PopulationPlan):
        device = resolve_device(config.device)
        self.threads_before = torch.get_num_threads()
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.config, self.plan = config, plan
        self.ids = parts_of(config)
        try:
            self.shards = [
                [Watched(build_part(spec, device, plan.dataset), config.silent_part_s) for spec in specs]
                for specs in replica_specs(plan.specs)
            ]
        except BaseException:  # the process's thread count goes back as it was
            self.close()
            raise
        self.parts = self.shards[0]  # replica 0 of every part: what evaluates; the first replica of each
        self.baton = Baton()
        for i, spec in enumerate(plan.specs):
            if spec.replicas > 1:
                rendezvous = self.baton.rendezvous_for(spec.replicas)
                for r in range(spec.replicas):
                    self.replica(i, r).join_replicas(lambda value, r=r, meet=rendezvous: meet.gather(r, value))
        needs = config.method.method.needs
        self.populations = [Population.of([p.spec.pid for p in shard], shard, needs) for shard in self.shards]
        self.population = self.populations[0]

    def replica(self, part: int, r: int):
        """Replica ``r`` of part ``part`` (its index in ``parts_of`` order)."""
        return next(p for p in self.shards[r] if p.spec.pid == self.plan.specs[part].pid)

    def begin_epoch(self, epoch: int) -> dict[str, dict[str, float]]:
        lrs = {pid.name: part.begin_epoch(epoch) for pid, part in zip(self.ids, self.parts)}
        for shard in self.shards[1:]:
            for part in shard:
                part.begin_epoch(epoch)
        return lrs

    def train_epoch(self, steps: int, on_step: Callable[[], None]) -> list[list[Metrics]]:
        for _ in range(steps):
            if len(self.populations) == 1:
                population_step(self.population)
            else:
                self.baton.run([lambda p=p: population_step(p) for p in self.populations])
            on_step()
        logs = {i: [] for i in range(len(self.ids))}
        for shard in self.shards:
            for part in shard:
                logs[self.ids.index(part.spec.pid)].append(part.end_epoch())
        return epoch_metrics([merge_replicas(logs[i]) for i in range(len(self.ids))])

    def evaluate(self, split: Split) -> dict[str, dict[str, float]]:
        for part in self.parts:
            part.begin_eval(split)
        batches = population_eval(self.population, self.plan.num_eval_batches[split])
        return accuracy(batches, [pid.name for pid in self.ids if pid.kind == "member"], split)

    def placement(self) -> dict:
        return {}  # one process

    def save(self, store: RunStore, folder: str) -> dict[str, Shard]:
        return {
            key: shard
            for parts in self.shards
            for part in parts
            for key, shard in part.save(store.address, folder).items()
        }

    def load(self, store: RunStore, checkpoint: Checkpoint) -> None:
        for parts in self.shards:
            for part in parts:
                part.load(store.address, checkpoint)

    def close(self) -> None:
        torch.set_num_threads(self.threads_before)

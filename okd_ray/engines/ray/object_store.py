"""``object_store``: each step a fresh set of plain actor calls; tensors go part to part through Ray's object
store (on GPUs, through host memory)."""

from __future__ import annotations

import ray

from okd_ray.methods import Need
from okd_ray.population import PartId, Population, StepDone, part_class, population_step

from .group import first_failure
from .handles import RemotePart
from .transport import Bundles, DriverSteps, ShardParts


def calls(
    actors: list, ids: list[PartId], members: int, needs: frozenset[Need], tensor_transport: str | None = None
) -> Population:
    """The population as handles whose every method is an actor call (returning futures)."""
    parts = [RemotePart(a, part_class(pid), members, tensor_transport=tensor_transport) for a, pid in zip(actors, ids)]
    return Population.of(ids, parts, needs)


class ObjectStore(DriverSteps):
    keeps_hosts = True

    @staticmethod
    def check(bundles: Bundles) -> None:
        pass  # runs anywhere

    def __init__(self, shards: list[ShardParts], members: int, needs: frozenset[Need], bundles: Bundles):
        self.populations = [calls(s.actors, s.ids, members, needs) for s in shards]

    def submit(self) -> list[StepDone]:
        return [population_step(population) for population in self.populations]

    def result(self, future: list[StepDone]) -> list:
        """With replicas, a replica that lost another in their gather reports PeerLost, and one that waits for
        another that failed would wait for the group's timeout: the other's own error is looked for first."""
        done = [marker for step in future for marker in step.in_part_order()]
        return first_failure(done) if len(future) > 1 else ray.get(done)

    def close(self) -> None:
        pass

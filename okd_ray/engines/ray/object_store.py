"""``object_store``: each step a fresh set of plain actor calls; tensors go part to part through Ray's object
store (on GPUs, through host memory)."""

from __future__ import annotations

import ray

from okd_ray.methods import Need
from okd_ray.population import PartId, Population, StepDone, part_class, population_step

from .handles import RemotePart
from .transport import Bundles, DriverSteps


def calls(actors: list, ids: list[PartId], members: int, needs: frozenset[Need],
          tensor_transport: str | None = None) -> Population:
    """The population as handles whose every method is an actor call (returning futures)."""
    parts = [RemotePart(a, part_class(pid), members, tensor_transport=tensor_transport) for a, pid in zip(actors, ids)]
    return Population.of(ids, parts, needs)


class ObjectStore(DriverSteps):
    @staticmethod
    def check(bundles: Bundles) -> None:
        pass  # runs anywhere

    def __init__(self, actors: list, ids: list[PartId], members: int, needs: frozenset[Need], bundles: Bundles):
        self.population = calls(actors, ids, members, needs)

    def submit(self) -> StepDone:
        return population_step(self.population)

    def result(self, future: StepDone) -> list:
        return ray.get(future.in_part_order())

    def close(self) -> None:
        pass

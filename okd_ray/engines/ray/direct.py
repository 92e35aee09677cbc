"""``direct``: Ray Direct Transport. Actor calls whose tensors move actor to actor over a collective group of all
the parts (gloo on CPUs, NCCL between GPUs), outside the object store; the driver still submits every call."""

from __future__ import annotations

from ray.experimental.collective import create_collective_group

from okd_ray.methods import Need
from okd_ray.population import PartId

from .object_store import ObjectStore, calls
from .transport import Bundles, gpu_shares, one_gpu_per_part


class Direct(ObjectStore):
    @staticmethod
    def check(bundles: Bundles) -> None:
        one_gpu_per_part("direct", bundles)

    def __init__(self, actors: list, ids: list[PartId], members: int, needs: frozenset[Need], bundles: Bundles):
        nccl = any(gpu_shares(bundles))
        create_collective_group(actors, backend="nccl" if nccl else "torch_gloo")
        self.population = calls(actors, ids, members, needs, tensor_transport="nccl" if nccl else "gloo")

"""``direct``: Ray Direct Transport. Actor calls whose tensors move actor to actor over a collective group of all
the parts (gloo on CPUs, NCCL between GPUs), outside the object store; the driver still submits every call."""

from __future__ import annotations

from ray.experimental.collective import create_collective_group

from okd_ray.errors import ConfigError
from okd_ray.methods import Need
from okd_ray.population import PartId

from .object_store import ObjectStore, calls
from .transport import Bundles, gpu_shares


class Direct(ObjectStore):
    @staticmethod
    def check(bundles: Bundles) -> None:
        """NCCL needs one whole GPU per part (two ranks on one GPU are refused: NCCL_ERROR_INVALID_USAGE, measured
        on an H100); gloo needs every part on the CPU."""
        gpus = gpu_shares(bundles)
        if any(gpus) and min(gpus) < 1:
            raise ConfigError(
                f"ray.transport=direct: the parts' GPU shares are {gpus}; NCCL needs one whole GPU per part, members "
                "and fusion alike. Set ray.num_gpus_per_member=1 and ray.num_gpus_fusion=1 on a cluster with that "
                "many GPUs, or use ray.transport=compiled (measured fastest on a shared GPU) or object_store")

    def __init__(self, actors: list, ids: list[PartId], members: int, needs: frozenset[Need], bundles: Bundles):
        nccl = any(gpu_shares(bundles))
        create_collective_group(actors, backend="nccl" if nccl else "torch_gloo")
        self.population = calls(actors, ids, members, needs, tensor_transport="nccl" if nccl else "gloo")

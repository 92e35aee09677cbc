"""``direct``: Ray Direct Transport. Actor calls whose tensors move actor to actor outside the object store, by the
backend the parts' devices call for: gloo between CPU parts and NCCL between parts with a GPU each, over a collective
group of all the parts; CUDA IPC between parts that share one GPU, one-sided and without a group (the receiver
reads the sender's memory once the sender's CUDA event has passed: nothing is copied, and no part changes what it
received in place). The driver still submits every call."""

from __future__ import annotations

import ray
from ray.experimental.collective import create_collective_group, destroy_collective_group

from okd_ray.errors import ConfigError
from okd_ray.methods import Need

from .object_store import ObjectStore, calls
from .transport import Bundles, ShardParts, gpu_shares


def backend(bundles: Bundles) -> str:
    gpus = gpu_shares(bundles)
    if not any(gpus):
        return "gloo"
    return "nccl" if min(gpus) >= 1 else "cuda_ipc"


class Direct(ObjectStore):
    @staticmethod
    def check(bundles: Bundles) -> None:
        gpus = gpu_shares(bundles)
        if not any(gpus) or min(gpus) >= 1:
            return  # gloo, or NCCL with a GPU each
        if min(gpus) == 0:
            raise ConfigError(
                f"ray.transport=direct: the parts' GPU shares are {gpus}; a part on the CPU and one on a GPU share "
                "no direct transport. Give every part a GPU share (ray.num_gpus_fusion too), or use object_store"
            )
        if sum(gpus) > 1:
            raise ConfigError(
                f"ray.transport=direct: the parts' GPU shares are {gpus}; parts that share a GPU exchange by CUDA IPC, "
                f"which needs all of them on one GPU, and these sum to {sum(gpus):g}. Give each part at most "
                f"1/{len(gpus)} of a GPU, or a whole GPU each (NCCL)"
            )

    def __init__(self, shards: list[ShardParts], members: int, needs: frozenset[Need], bundles: Bundles):
        transport = backend(bundles)
        by_rank = {rank: actor for shard in shards for rank, actor in zip(shard.ranks, shard.actors)}
        actors = [by_rank[rank] for rank in sorted(by_rank)]
        self.group = None
        if transport == "cuda_ipc":
            on_one_gpu(ray.get([a.ready.remote() for a in actors]))
        else:  # ranks as the population's process group has them, where it has one (replicas): Ray's reuses it
            self.group = create_collective_group(actors, backend="nccl" if transport == "nccl" else "torch_gloo")
        self.populations = [calls(s.actors, s.ids, members, needs, tensor_transport=transport) for s in shards]

    def close(self) -> None:
        if self.group is not None:
            destroy_collective_group(self.group)


def on_one_gpu(where: list[dict]) -> None:
    """CUDA IPC maps another process's GPU memory: every part must have been given the same GPU of one node."""
    places = sorted({(w["node"], ",".join(w["gpus"])) for w in where})
    if len(places) > 1:
        listed = ", ".join(f"node {node[:8]} GPU {gpus}" for node, gpus in places)
        raise ConfigError(
            f"ray.transport=direct: parts that share a GPU exchange by CUDA IPC, but Ray gave them {len(places)} "
            f"different GPUs ({listed}); use ray.placement=pack on a node with one GPU free for all of them, or "
            "ray.transport=object_store"
        )

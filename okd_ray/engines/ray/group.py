"""The population's process group (``torch.distributed``): every actor joins it once, at set-up, where
``collective`` sends its messages or replicas gather their gradients (gloo on CPUs, NCCL between GPUs). A message
that fails is ``PeerLost``: the driver then waits for the error of the part that caused it (``first_failure``).
"""

from __future__ import annotations

import contextlib
import socket
from datetime import timedelta

import ray
import torch
import torch.distributed as dist
from ray.exceptions import RayTaskError

from okd_ray.errors import PopulationLost
from okd_ray.population.replicas import Gather

GROUP_TIMEOUT_S = 600  # the longest a part waits on a message: a peer stuck beyond it ends the epoch with an error
CAUSE_WAIT_S = 30  # once a part lost a peer, how long the driver waits for the failure that caused it


class PeerLost(RuntimeError):
    """A message to or from another part failed: that part has died or raised (its own error says why)."""


@contextlib.contextmanager
def peer_errors():
    """A failed send or receive becomes PeerLost: the driver then looks for the part that caused it."""
    try:
        yield
    except RuntimeError as error:  # gloo and NCCL raise DistBackendError, a RuntimeError
        raise PeerLost(f"a message between parts failed: {error}") from error


def free_address() -> str:
    """This node's address and a port free on it, for the group's rendezvous."""
    with socket.socket() as s:
        s.bind(("", 0))
        return f"{ray.util.get_node_ip_address()}:{s.getsockname()[1]}"


def join_group(rank: int, world: int, backend: str, address: str) -> None:
    """Join the population's process group: every actor, as ``rank`` of ``world``, with the group's timeout."""
    dist.init_process_group(
        backend, init_method=f"tcp://{address}", rank=rank, world_size=world, timeout=timedelta(seconds=GROUP_TIMEOUT_S)
    )


def replica_gather(groups: list[list[int]], rank: int) -> Gather | None:
    """Every part's replica group (all ranks make every group, in the same order); what this rank's replicas
    gather through: an all-gather in its group, replica order being rank order. None for a part of one replica
    (in no group: it gathers nothing)."""
    mine = None
    for ranks in groups:
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = group
    if mine is None:
        return None

    def gather(value: torch.Tensor) -> list[torch.Tensor]:
        with peer_errors():
            values = [torch.empty_like(value) for _ in range(dist.get_world_size(mine))]
            dist.all_gather(values, value.contiguous(), group=mine)
        return values

    return gather


def first_failure(futures: list) -> list:
    """Every part's result, or the error that stopped the epoch: a part's own (a dead actor, a diverged loss, a
    plugin's mistake) rather than a peer's report that a message failed because of it."""
    pending, lost = list(futures), None
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=CAUSE_WAIT_S if lost else None)
        if not ready:
            break  # only lost peers to show for it
        try:
            ray.get(ready)
        except RayTaskError as e:
            if not isinstance(e.cause, PeerLost):
                raise
            lost = lost or e.cause
    if lost is not None:
        raise PopulationLost(f"a part of the population stopped answering its peers: {lost}")
    return ray.get(futures)

"""``collective``: the parts run the population step themselves, a whole epoch per driver call, exchanging their
messages point to point over one ``torch.distributed`` process group made at set-up (gloo on CPUs, NCCL between
GPUs). The driver's work per step is nothing; every part's metrics are read once the epoch ends.

Every part walks the same ``population_step`` (SPMD). A call on its own part runs it and sends each result at once
to the parts whose calls take it; a call on another part stands for the results that part will own. A receiver
takes each argument where it is used, so the arithmetic is the local engine's, operation for operation: no sum
crosses a process.
"""

from __future__ import annotations

import collections
import math
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray
import torch
import torch.distributed as dist
from torch.utils._pytree import tree_flatten, tree_unflatten

from okd_ray.errors import ConfigError
from okd_ray.methods import Need
from okd_ray.population import PartId, Population, part_class, population_step
from okd_ray.population.protocol import flatten, nest, num_returns

from .group import first_failure, peer_errors
from .transport import Bundles, ShardParts, gpu_shares

ARGS_PER_CALL = 256  # message tags: call index x ARGS_PER_CALL + argument position, the same on every part


@dataclass
class Owned:
    """A value of the step as one part sees it: the ``index``-th result of the step's ``call``-th call, on part
    ``owner``; ``value`` where this part is its owner."""

    owner: int
    source: tuple[int, int]  # (call, index)
    value: Any = None


@dataclass(frozen=True)
class TensorSlot:
    """Where a tensor sat in a message: what the receiver allocates before it receives it."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool


class Exchange:
    """One part's messages: sent without waiting (every send is matched by a receive later in the same step on
    the receiving part, so the step cannot deadlock), received where used, the sends waited for once per step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sending, self.keep = [], []  # the sends in flight, and their tensors, kept alive until they complete

    def send(self, value: Any, dst: int, tag: int) -> None:
        """Two messages whatever ``value`` holds: its size, then one buffer with its structure (pickled, tensors
        replaced by their slots) and every tensor's bytes. Few messages matter: each is a rendezvous with the
        receiver, and on a busy CPU each costs a scheduling slice (measured: a message per tensor was slower)."""
        leaves, spec = tree_flatten(value)
        tensors = [t.detach().contiguous() for t in leaves if isinstance(t, torch.Tensor)]
        skeleton = [
            TensorSlot(tuple(t.shape), t.dtype, t.requires_grad) if isinstance(t, torch.Tensor) else t for t in leaves
        ]
        header = torch.frombuffer(bytearray(pickle.dumps((spec, skeleton))), dtype=torch.uint8).to(self.device)
        pieces = [header] + [t.view(-1).view(torch.uint8) for t in tensors]
        data = torch.zeros(sum(aligned(b.numel()) for b in pieces), dtype=torch.uint8, device=self.device)
        offset = 0
        for piece in pieces:  # each copied once, into its aligned place
            data[offset : offset + piece.numel()] = piece
            offset += aligned(piece.numel())
        size = torch.tensor([data.numel(), header.numel()], dtype=torch.int64, device=self.device)
        with peer_errors():
            self.sending += [dist.isend(size, dst, tag=tag), dist.isend(data, dst, tag=tag)]
        self.keep += [size, data]

    def recv(self, src: int, tag: int) -> Any:
        with peer_errors():
            size = torch.empty(2, dtype=torch.int64, device=self.device)
            dist.recv(size, src, tag=tag)
            total, header = size.tolist()
            data = torch.empty(total, dtype=torch.uint8, device=self.device)
            dist.recv(data, src, tag=tag)
        spec, skeleton = pickle.loads(data[:header].cpu().numpy().tobytes())
        offset, leaves = aligned(header), []
        for leaf in skeleton:
            if isinstance(leaf, TensorSlot):
                count = math.prod(leaf.shape) * leaf.dtype.itemsize
                tensor = data[offset : offset + count].view(leaf.dtype).view(leaf.shape).clone()
                leaf, offset = tensor.requires_grad_(leaf.requires_grad), offset + aligned(count)
            leaves.append(leaf)
        return tree_unflatten(leaves, spec)

    def flush(self) -> None:
        with peer_errors():
            for work in self.sending:
                work.wait()
        self.sending, self.keep = [], []


ALIGN = 16  # bytes: every tensor starts at a multiple of it in a message's buffer, so it can be viewed as its dtype


def aligned(count: int) -> int:
    return -(-count // ALIGN) * ALIGN


class RankPart:
    """Part ``rank`` as the step code on part ``runner.rank`` sees it."""

    def __init__(self, runner: CollectiveSteps, rank: int, cls: type):
        self.runner, self.rank, self.cls = runner, rank, cls

    def __getattr__(self, method: str):
        return lambda *args: self.runner.call(self.rank, method, getattr(self.cls, method), args)


class CollectiveSteps:
    """The actor's side: this part's place in the process group and its walk through every step.

    The step is walked once without running anything, to learn where each result goes (the step code is the
    same every step). Then a part sends each result as soon as it has it, to every part whose call takes it:
    sent later, at the taking call, a message would wait on its sender's own later work (measured: m0's ring
    message left only after m0's update, and m1 waited for it)."""

    def __init__(self, part, position: int, ranks: list[int], ids: list[PartId], needs: frozenset[Need]):
        """Part ``position`` of its shard's parts ``ids``, whose ranks in the population's process group (made
        before: ``join_group``) are ``ranks``."""
        self.part, self.rank, self.ranks, self.members = part, position, ranks, part.spec.members
        self.exchange = Exchange(part.device if dist.get_backend() == "nccl" else torch.device("cpu"))
        self.population = Population.of(ids, [RankPart(self, r, part_class(pid)) for r, pid in enumerate(ids)], needs)
        # where each result goes: (call, index) -> [(part, tag)], learned by one walk that computes nothing
        self.consumers: dict[tuple[int, int], list[tuple[int, int]]] = collections.defaultdict(list)
        self.recording = True
        self._walk()
        self.recording = False

    def call(self, rank: int, method: str, fn, args: tuple):
        self.calls += 1
        call, tags = self.calls, [self.calls * ARGS_PER_CALL + i for i in range(len(args))]
        count = num_returns(fn, self.members)
        values = [None] * count
        if self.recording:
            for arg, tag in zip(args, tags):
                if isinstance(arg, Owned):
                    self.consumers[arg.source].append((rank, tag))
        elif rank == self.rank:
            flat = flatten(getattr(self.part, method)(*map(self._take, args, tags)), fn)
            values = list(flat) if count > 1 else [flat]
            for index, value in enumerate(values):
                for dst, tag in self.consumers.get((call, index), ()):
                    if dst != self.rank:
                        self.exchange.send(value, self.ranks[dst], tag)
        results = [Owned(rank, (call, index), value) for index, value in enumerate(values)]
        return nest(results if count > 1 else results[0], fn, self.members)

    def _take(self, arg: Any, tag: int) -> Any:
        if not isinstance(arg, Owned):
            return arg  # None for a part the population does not have
        return arg.value if arg.owner == self.rank else self.exchange.recv(self.ranks[arg.owner], tag)

    def _walk(self) -> Any:
        self.calls = 0
        return population_step(self.population).in_part_order()[self.rank].value

    def run(self, steps: int) -> list[int]:
        """``steps`` population steps; this part's done marker of each."""
        done = []
        for _ in range(steps):
            done.append(self._walk())
            self.exchange.flush()
        return done


class Collective:
    """The driver's side: one set-up call per part, then one call per part and epoch."""

    keeps_hosts = True  # each host leaves the process group as it releases its part

    @staticmethod
    def check(bundles: Bundles) -> None:
        """NCCL needs one whole GPU per part (two ranks on one GPU are refused: NCCL_ERROR_INVALID_USAGE, measured
        on an H100); gloo needs every part on the CPU."""
        gpus = gpu_shares(bundles)
        if any(gpus) and min(gpus) < 1:
            raise ConfigError(
                f"ray.transport=collective: the parts' GPU shares are {gpus}; NCCL needs one whole GPU per part, "
                "members and fusion alike. Set ray.num_gpus_per_member=1 and ray.num_gpus_fusion=1 on a cluster with "
                "that many GPUs, or use ray.transport=direct (CUDA IPC between parts on one GPU)"
            )

    def __init__(self, shards: list[ShardParts], members: int, needs: frozenset[Need], bundles: Bundles):
        ray.get(
            [
                actor.join_collective.remote(position, shard.ranks, shard.ids, needs)
                for shard in shards
                for position, actor in enumerate(shard.actors)
            ]
        )
        self.actors = [actor for shard in shards for actor in shard.actors]

    def run(self, count: int) -> Iterator[list]:
        futures = [a.run_steps.remote(count) for a in self.actors]
        yield from (list(step) for step in zip(*first_failure(futures)))

    def close(self) -> None:
        pass  # the process group goes with the hosts' parts

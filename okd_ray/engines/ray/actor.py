"""The Ray actor that hosts one part of a population (member, fusion, trunk) at a time and runs its methods.

A host outlives its part: once a population ends cleanly it drops the part, leaves the process group and goes back
to the pool (``hosts.py``), so the next population of this process builds its part in a process that has already
started and imported torch and okd_ray.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import time
from typing import Any

import ray
import torch
import torch.distributed as dist
from ray import cloudpickle

from okd_ray.plugins import load_plugins
from okd_ray.population import build_part
from okd_ray.population.protocol import flatten, num_returns
from okd_ray.population.watch import Watched

from . import collective, group


@ray.remote(enable_tensor_transport=True)
class PartHost:
    """Hosts one part of a population at a time and runs its methods."""

    def __init__(self):
        self.started_rng = torch.get_rng_state()  # a new process's: what every part built here starts from
        self.part: Watched | None = None
        self.collective: collective.CollectiveSteps | None = None
        self.outbox: tuple = ()

    def build(
        self, plugins: list[str], spec: bytes, data: bytes | None, threads: int, silent_s: float, profile: bool
    ) -> dict:
        """Build the part of ``spec`` (a PartSpec) with ``data`` (the plan's data set, None where the part reads
        none), each pickled: opened once the plugins that define its terms, model and data set are imported here
        too. Returns where it runs (``ready``)."""
        torch.set_num_threads(threads)
        torch.set_rng_state(self.started_rng)
        load_plugins(plugins)
        device = torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")
        dataset = cloudpickle.loads(data) if data is not None else None
        self.part = Watched(build_part(cloudpickle.loads(spec), device, dataset), silent_s)
        self.profile = profile
        self.busy: dict[str, list[float]] = collections.defaultdict(list)
        return self.ready()

    def release(self) -> None:
        """Drop the part and the population's process group: the host is as the next population's build needs it."""
        self.part, self.collective, self.outbox = None, None, ()
        if dist.is_initialized():
            dist.destroy_process_group()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def run(self, method: str, *args):
        """A hot-path call: the part's method, its result flattened into one value per Ray return."""
        fn = getattr(self.part, method)
        with self._timed(method):
            return flatten(fn(*args), fn)

    def run_after(self, _tick: Any, method: str, *args):
        """``run`` for a compiled graph's first calls, which must take the graph's input."""
        return self.run(method, *args)

    def run_one(self, method: str, *args):
        """``run`` for transports that return one value per call: the first now, the rest by ``take``."""
        result = self.run(method, *args)
        self.outbox = result if num_returns(getattr(self.part, method), self.members) > 1 else (result,)
        return self.outbox[0]

    def take(self, index: int):
        return self.outbox[index]

    @contextlib.contextmanager
    def _timed(self, name: str):
        """Seconds spent computing (not waiting for inputs), per call, when a benchmark asks for them."""
        if not self.profile:
            yield
            return
        started = time.perf_counter()
        yield
        if self.part.device.type == "cuda":
            torch.cuda.synchronize(self.part.device)
        self.busy[name].append(time.perf_counter() - started)

    @property
    def members(self) -> int:
        return self.part.spec.members

    def compute_seconds(self) -> dict[str, list[float]]:
        busy, self.busy = dict(self.busy), collections.defaultdict(list)
        return busy

    def ready(self) -> dict:
        """Where this host runs: its node, process, placement group and GPUs (a liveness probe too)."""
        context = ray.get_runtime_context()
        return {
            "node": context.get_node_id(),
            "pid": os.getpid(),
            "placement_group": context.get_placement_group_id(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
        }

    def free_address(self) -> str:
        return group.free_address()

    def join_group(self, rank: int, world: int, backend: str, address: str) -> None:
        """Join the population's process group (for ``collective`` and for replicas), as ``rank`` of ``world``."""
        group.join_group(rank, world, backend, address)

    def join_replicas(self, groups: list[list[int]], rank: int) -> None:
        """Meet this part's other replicas in their optimizer steps, through the process group (every actor makes
        every part's group; a part of one replica, where others have replicas, joins none)."""
        gather = group.replica_gather(groups, rank)
        if gather is not None:
            self.part.join_replicas(gather)

    def join_collective(self, position: int, ranks: list[int], ids: list, needs: frozenset) -> None:
        """``collective``: walk the step as part ``position`` of its shard's parts ``ids`` (whose ranks are
        ``ranks``)."""
        self.collective = collective.CollectiveSteps(self.part, position, ranks, ids, needs)

    def run_steps(self, steps: int) -> list[int]:
        """``collective``: ``steps`` population steps run by the parts themselves; this part's done marker of each."""
        with self._timed("steps"):
            return self.collective.run(steps)

    def call(self, method: str, *args):
        """Anything outside the hot path: begin_epoch, save, load."""
        return getattr(self.part, method)(*args)

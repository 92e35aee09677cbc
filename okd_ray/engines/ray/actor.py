"""The Ray actor that hosts one part of the population (member, fusion, trunk) and runs its methods."""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Any

import ray
import torch
from ray import cloudpickle

from okd_ray.plugins import load_plugins
from okd_ray.population import build_part
from okd_ray.population.protocol import flatten, num_returns

from . import collective, group


@ray.remote(enable_tensor_transport=True)
class PartActor:
    """Hosts one part of the population and runs its methods."""

    def __init__(self, plugins: list[str], spec: bytes, data: bytes | None, threads: int, profile: bool):
        """``spec`` is the part's PartSpec and ``data`` the plan's data set (None: the part reads none), each
        pickled: opened once the plugins that define its terms, model and data set are imported here too."""
        torch.set_num_threads(threads)
        load_plugins(plugins)
        self.device = torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")
        dataset = cloudpickle.loads(data) if data is not None else None
        self.part = build_part(cloudpickle.loads(spec), self.device, dataset)
        self.profile = profile
        self.busy: dict[str, list[float]] = collections.defaultdict(list)
        self.outbox: tuple = ()
        self.collective: collective.CollectiveSteps | None = None

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
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.busy[name].append(time.perf_counter() - started)

    @property
    def members(self) -> int:
        return self.part.spec.members

    def compute_seconds(self) -> dict[str, list[float]]:
        busy, self.busy = dict(self.busy), collections.defaultdict(list)
        return busy

    def ready(self) -> dict:
        """Where this part runs: its node, placement group and GPUs (a liveness probe too)."""
        context = ray.get_runtime_context()
        return {"node": context.get_node_id(), "placement_group": context.get_placement_group_id(),
                "gpus": [str(g) for g in ray.get_gpu_ids()]}

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

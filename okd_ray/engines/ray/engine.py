"""The Ray engine: one actor per part (member, fusion, trunk); the same population step as the local engine.

The step code (``population/step.py``) runs unchanged on handles whose methods return Ray futures: a future
passed to another actor's method is resolved there, so feature maps, logits and gradients go actor to actor,
never through the driver. How they move is the transport's (``TRANSPORTS``, a module each).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import ray
from ray import cloudpickle
from ray.exceptions import RayActorError, RayChannelError, RayTaskError

from okd_ray.checkpoint import Checkpoint, Shard
from okd_ray.config import TrainConfig
from okd_ray.data.base import Split
from okd_ray.errors import ConfigError, OkdRayError, PopulationLost
from okd_ray.metrics import accuracy
from okd_ray.population import PopulationPlan, epoch_metrics, parts_of, population_eval
from okd_ray.population.protocol import Metrics
from okd_ray.population.replicas import merge_replicas
from okd_ray.storage import RunStore

from ..resources import PartResources, connect, part_bundles
from .collective import Collective
from .compiled import Compiled
from .direct import Direct
from .hosts import POOL, Host
from .object_store import ObjectStore, calls
from .transport import ShardParts, Transport, auto_transport, gpu_shares

TRANSPORTS: dict[str, type[Transport]] = {
    "object_store": ObjectStore,
    "compiled": Compiled,
    "direct": Direct,
    "collective": Collective,
}


def translated(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a dead actor becomes PopulationLost, an error inside an actor its original error."""
    try:
        return fn()
    except RayTaskError as e:
        cause = e.cause
        if isinstance(cause, (RayActorError, RayChannelError)):
            raise PopulationLost(f"an actor of the population died: {cause}") from None
        if isinstance(cause, OkdRayError):
            raise cause  # noqa: B904 - the actor's own error, as the local engine raises it (its chain is Ray's)
        raise
    except RayActorError as e:
        if e.actor_init_failed:  # a host that could not start (say, a worker without the Python it needs)
            raise OkdRayError(f"a population actor failed to start: {e}") from None
        raise PopulationLost(f"an actor of the population died: {e}") from None
    except RayChannelError as e:
        raise PopulationLost(f"the compiled graph lost an actor: {e}") from None


def check_replicas(bundles: list[dict[str, float]]) -> None:
    """Replicas gather their gradients through the process group: NCCL, which needs a whole GPU per actor, where
    the parts have GPUs."""
    gpus = gpu_shares(bundles)
    if any(gpus) and min(gpus) < 1:
        raise ConfigError(
            f"members.N.replicas: the replicas' GPU shares are {gpus}; replicas average their gradients "
            "over NCCL, which needs a whole GPU each (members and fusion alike). Set "
            "ray.num_gpus_per_member=1 and ray.num_gpus_fusion=1, or use fewer replicas"
        )


def built(builds: list) -> list[dict]:
    """Where each part was built (its host's ``ready``); a part that cannot be built there is a failed start."""
    try:
        return ray.get(builds)
    except RayTaskError as e:
        cause = e.cause if isinstance(e.cause, OkdRayError) else repr(e.cause)
        raise OkdRayError(f"a population actor failed to start: {cause}") from None


class RayEngine:
    """One actor per part and replica, warm ones where this process has them (``hosts.py``). A part's replicas
    gather their gradients through a process group of the population's actors, which ``collective`` sends its
    messages through too."""

    def __init__(self, config: TrainConfig, plan: PopulationPlan, profile: bool = False):
        connect(config.ray.address)
        self.config, self.plan = config, plan
        self.ids = parts_of(config)
        self.specs = [replace(spec, replica=r) for spec in plan.specs for r in range(spec.replicas)]  # one per actor
        bundles = part_bundles(config)
        self.transport = config.ray.transport if config.ray.transport != "auto" else auto_transport(bundles)
        TRANSPORTS[self.transport].check(bundles)  # before anything is reserved or started
        if len(self.specs) > len(plan.specs):
            check_replicas(bundles)
        self.resources: PartResources = POOL.reserve(config)
        self.hosts: list[Host] = []
        self.steps: Transport | None = None
        self.clean = True  # no call of the population was interrupted: its hosts may serve the next one
        try:
            self._start(profile)
        except BaseException:  # a half-started population gives back what it holds: a retry must not wait on it
            self.clean = False
            self.close()
            raise

    def _start(self, profile: bool) -> None:
        plugins = self.config.plugins
        self.hosts = [POOL.host(self.resources, i, plugins) for i in range(len(self.specs))]
        data = ray.put(cloudpickle.dumps(self.plan.dataset))  # built once by the plan; in the object store once
        builds = []
        for i, spec in enumerate(self.specs):
            _, threads = self.resources.options(i)
            builds.append(
                self.hosts[i].actor.build.remote(
                    plugins,
                    cloudpickle.dumps(spec),
                    data if spec.reads_data else None,
                    threads,
                    self.config.silent_part_s,
                    profile,
                )
            )
        where = self._guard(lambda: built(builds))
        for host in self.hosts:
            host.plugins |= set(plugins)
        self.actors = [host.actor for host in self.hosts]
        self.where = {
            "driver_placement_group": ray.get_runtime_context().get_placement_group_id(),  # a Tune trial's
            "parts": [
                {
                    "part": spec.pid.name,
                    **({"replica": spec.replica} if spec.replicas > 1 else {}),
                    "bundle": self.resources.bundle(i),
                    "host": host.name,
                    **w,
                }
                for i, (spec, host, w) in enumerate(zip(self.specs, self.hosts, where))
            ],
        }
        self._guard(self._join)
        self.steps = self._guard(self._make_steps)

    def _join(self) -> None:
        """The population's process group, where ``collective`` or replicas need it; each part's replicas meet."""
        replicated = len(self.specs) > len(self.plan.specs)
        if self.transport != "collective" and not replicated:
            return
        backend = "nccl" if any(gpu_shares(self.resources.bundles)) else "gloo"
        address = ray.get(self.actors[0].free_address.remote())
        ray.get([a.join_group.remote(rank, len(self.actors), backend, address) for rank, a in enumerate(self.actors)])
        if replicated:
            groups = [
                [rank for rank, s in enumerate(self.specs) if s.pid == part.pid]
                for part in self.plan.specs
                if part.replicas > 1
            ]
            ray.get([a.join_replicas.remote(groups, rank) for rank, a in enumerate(self.actors)])

    def shards(self) -> list[ShardParts]:
        """Shard r: replica r of every part that has one, in ``parts_of`` order."""
        return [
            ShardParts([self.actors[i] for i in ranks], [self.specs[i].pid for i in ranks], ranks)
            for r in range(max(s.replicas for s in self.specs))
            for ranks in [[i for i, s in enumerate(self.specs) if s.replica == r]]
        ]

    def _make_steps(self) -> Transport:
        return TRANSPORTS[self.transport](
            self.shards(), len(self.config.members), self.config.method.method.needs, self.resources.bundles
        )

    def _guard(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; a dead actor becomes PopulationLost, an error inside an actor its original error. Whatever
        stops it (Ctrl-C too) leaves the population's hosts unfit for another one."""
        try:
            return translated(fn)
        except BaseException:
            self.clean = False
            raise

    def _call_all(self, method: str, *args) -> list:
        return self._guard(lambda: ray.get([a.call.remote(method, *args) for a in self.actors]))

    def begin_epoch(self, epoch: int) -> dict[str, dict[str, float]]:
        lrs = self._call_all("begin_epoch", epoch)
        return {spec.pid.name: part for spec, part in zip(self.specs, lrs) if not spec.replica}

    def train_epoch(self, steps: int, on_step: Callable[[], None]) -> list[list[Metrics]]:
        each_step = self.steps.run(steps)
        while self._guard(lambda: next(each_step, None)) is not None:
            on_step()
        logs = self._call_all("end_epoch")
        return epoch_metrics(
            [merge_replicas([log for spec, log in zip(self.specs, logs) if spec.pid == pid]) for pid in self.ids]
        )

    def evaluate(self, split: Split) -> dict[str, dict[str, float]]:
        """Evaluation batches by plain calls whatever the transport, on every part's first replica (the replicas
        are identical): the driver reads their logits."""
        first = self.shards()[0]
        population = calls(first.actors, first.ids, len(self.config.members), self.config.method.method.needs)
        self._guard(lambda: ray.get([a.call.remote("begin_eval", split) for a in first.actors]))  # a part that
        # cannot start testing says so here
        batches = population_eval(population, self.plan.num_eval_batches[split])
        resolved = self._guard(
            lambda: [
                (ray.get(labels), ray.get(logits), *(ray.get(x) if x is not None else None for x in (fused, gate)))
                for labels, logits, fused, gate in batches
            ]
        )
        return accuracy(resolved, [pid.name for pid in self.ids if pid.kind == "member"], split)

    def placement(self) -> dict:
        return self.where

    def save(self, store: RunStore, folder: str) -> dict[str, Shard]:
        """Every part writes its own shard, all at once; the driver only waits for their sizes and digests."""
        shards = self._guard(lambda: ray.get([a.call.remote("save", store.address, folder) for a in self.actors]))
        return {key: shard for written in shards for key, shard in written.items()}

    def load(self, store: RunStore, checkpoint: Checkpoint) -> None:
        self._guard(lambda: ray.get([a.call.remote("load", store.address, checkpoint) for a in self.actors]))

    def close(self) -> None:
        """After a clean end the transport tears down, and the hosts release their parts and wait for this process's
        next population. After a failure, or where the transport keeps no hosts, the actors go first: a compiled
        graph's loop can stay blocked on a channel read through a graceful teardown (measured: 30 s to minutes);
        with its actors gone the teardown is immediate."""
        if self.clean and self.steps is not None and self.steps.keeps_hosts:
            try:
                self.steps.close()
                ray.get([host.actor.release.remote() for host in self.hosts])
                return POOL.give_back(self.resources, self.hosts, self.config.ray.keep_hosts_s)
            except Exception:  # noqa: BLE001 - a host that cannot release is no host to keep
                pass
        POOL.discard(self.resources, self.hosts)
        if self.steps is not None:
            try:
                self.steps.close()
            except Exception:  # noqa: BLE001 - a graph whose actors are gone cannot tear down cleanly
                pass

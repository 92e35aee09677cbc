"""The Ray engine: one actor per part (member, fusion, trunk); the same population step as the local engine.

The step code (``population/step.py``) runs unchanged on handles whose methods return Ray futures: a future
passed to another actor's method is resolved there, so feature maps, logits and gradients go actor to actor,
never through the driver. How they move is the transport's (``TRANSPORTS``, a module each).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import ray
from ray import cloudpickle
from ray.exceptions import RayActorError, RayChannelError, RayTaskError

from okd_ray.checkpoint import Checkpoint, Shard, shard_path
from okd_ray.config import TrainConfig
from okd_ray.data.base import Split
from okd_ray.errors import OkdRayError, PopulationLost
from okd_ray.metrics import accuracy
from okd_ray.population import PopulationPlan, epoch_metrics, parts_of, population_eval
from okd_ray.population.protocol import Metrics
from okd_ray.storage import RunStore

from ..resources import PartResources, connect, part_bundles, reserve
from .actor import PartActor
from .collective import Collective
from .compiled import Compiled
from .direct import Direct
from .object_store import ObjectStore, calls
from .transport import Transport, auto_transport

TRANSPORTS: dict[str, type[Transport]] = {"object_store": ObjectStore, "compiled": Compiled, "direct": Direct,
                                          "collective": Collective}


class RayEngine:
    def __init__(self, config: TrainConfig, plan: PopulationPlan, profile: bool = False):
        connect(config.ray.address)
        self.config, self.plan = config, plan
        self.ids = parts_of(config)
        bundles = part_bundles(config)
        self.transport = config.ray.transport if config.ray.transport != "auto" else auto_transport(bundles)
        TRANSPORTS[self.transport].check(bundles)  # before anything is reserved or started
        self.resources: PartResources = reserve(config)
        self.actors, self.steps = [], None
        try:
            self._start(profile)
        except BaseException:  # a half-started population gives back what it holds: a retry must not wait on it
            self.close()
            raise

    def _start(self, profile: bool) -> None:
        run_id = uuid.uuid4().hex[:8]
        for i, spec in enumerate(self.plan.specs):
            options, threads = self.resources.options(i)
            name = f"okd-{run_id}-{spec.pid.key}"  # findable: ray.get_actor(name)
            self.actors.append(PartActor.options(name=name, **options).remote(
                self.config.plugins, cloudpickle.dumps(spec), threads, profile))
        where = self._guard(lambda: ray.get([a.ready.remote() for a in self.actors]))
        self.where = {
            "driver_placement_group": ray.get_runtime_context().get_placement_group_id(),  # a Tune trial's
            "parts": [{"part": pid.name, "bundle": self.resources.bundle(i), **w}
                      for i, (pid, w) in enumerate(zip(self.ids, where))],
        }
        self.steps = self._guard(self._make_steps)

    def _make_steps(self) -> Transport:
        return TRANSPORTS[self.transport](self.actors, self.ids, len(self.config.members),
                                          self.config.method.method.needs, self.resources.bundles)

    def _guard(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; a dead actor becomes PopulationLost, an error inside an actor its original error."""
        try:
            return fn()
        except RayTaskError as e:
            cause = e.cause
            if isinstance(cause, (RayActorError, RayChannelError)):
                raise PopulationLost(f"an actor of the population died: {cause}") from None
            raise cause if isinstance(cause, OkdRayError) else e
        except RayActorError as e:
            if e.actor_init_failed:  # a bad set-up on the worker (say, no data there), not a lost actor
                raise OkdRayError(f"a population actor failed to start: {e}") from None
            raise PopulationLost(f"an actor of the population died: {e}") from None
        except RayChannelError as e:
            raise PopulationLost(f"the compiled graph lost an actor: {e}") from None

    def _call_all(self, method: str, *args) -> list:
        return self._guard(lambda: ray.get([a.call.remote(method, *args) for a in self.actors]))

    def begin_epoch(self, epoch: int) -> dict[str, dict[str, float]]:
        return {pid.name: lrs for pid, lrs in zip(self.ids, self._call_all("begin_epoch", epoch))}

    def train_epoch(self, steps: int, on_step: Callable[[], None]) -> list[list[Metrics]]:
        each_step = self.steps.run(steps)
        while self._guard(lambda: next(each_step, None)) is not None:
            on_step()
        return epoch_metrics(self._call_all("end_epoch"))

    def evaluate(self, split: Split) -> dict[str, dict[str, float]]:
        """Evaluation batches by plain calls whatever the transport: the driver reads their logits."""
        population = calls(self.actors, self.ids, len(self.config.members), self.config.method.method.needs)
        self._call_all("begin_eval", split)  # waited for: a part that cannot start testing says so here
        batches = population_eval(population, self.plan.num_eval_batches[split])
        resolved = self._guard(lambda: [
            (ray.get(labels), ray.get(logits), *(ray.get(x) if x is not None else None for x in (fused, gate)))
            for labels, logits, fused, gate in batches
        ])
        return accuracy(resolved, [pid.name for pid in self.ids if pid.kind == "member"], split)

    def placement(self) -> dict:
        return self.where

    def save(self, store: RunStore, folder: str) -> dict[str, Shard]:
        """Every part writes its own shard, all at once; the driver only waits for their sizes and digests."""
        shards = self._guard(lambda: ray.get([a.call.remote("save", store.address, shard_path(folder, pid.key))
                                              for a, pid in zip(self.actors, self.ids)]))
        return {pid.key: shard for pid, shard in zip(self.ids, shards)}

    def load(self, store: RunStore, checkpoint: Checkpoint) -> None:
        self._guard(lambda: ray.get([a.call.remote("load", store.address, shard_path(checkpoint.folder, pid.key),
                                                   checkpoint.shards[pid.key])
                                     for a, pid in zip(self.actors, self.ids)]))

    def close(self) -> None:
        """The actors go first: a compiled graph's loop can stay blocked on a channel read through a graceful
        teardown (measured: 30 s, then Ray force-kills); with its actors gone the teardown is immediate."""
        for actor in self.actors:
            ray.kill(actor)
        if self.steps is not None:
            try:
                self.steps.close()
            except Exception:  # noqa: BLE001 - a graph whose actors are gone cannot tear down cleanly
                pass
        self.resources.release()

"""The Ray engine: one actor per part (member, fusion, trunk); the same population step as the local engine.

The step code (``population/step.py``) runs unchanged on handles whose methods return Ray futures: a
future passed to another actor's method is resolved there, so feature maps, logits and gradients go
actor to actor, never through the driver. Three transports carry them:

- ``object_store``: plain actor calls, tensors through Ray's object store;
- ``compiled``: the step is traced once into a Ray compiled graph (``ray.dag``) whose tensors move over
  shared-memory channels on one node, or NCCL between GPUs;
- ``direct``: Ray Direct Transport: actor calls whose tensors move over a collective group of all the
  parts (gloo on CPUs, NCCL on GPUs), outside the object store.

How many values each call returns follows from the parts' declared return types (``population/protocol``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import ray
import torch
from ray import cloudpickle
from ray.dag import DAGNode, InputNode, MultiOutputNode
from ray.experimental.collective import create_collective_group
from ray.exceptions import GetTimeoutError, RayActorError, RayChannelError, RayChannelTimeoutError, RayTaskError

from okd_ray.checkpoint import Checkpoint, Shard, shard_path
from okd_ray.config import TrainConfig
from okd_ray.errors import ConfigError, OkdRayError, PopulationLost
from okd_ray.data.base import Split
from okd_ray.metrics import EpochMeters, accuracy
from okd_ray.plugins import load_plugins
from okd_ray.population import (PartId, Population, PopulationPlan, StepMetrics, build_part, part_class, parts_of,
                                population_eval, population_step)
from okd_ray.population.protocol import flatten, nest, num_returns, return_names
from okd_ray.storage import RunStore

from .resources import PartResources, connect, part_bundles, reserve

STEPS_IN_FLIGHT = 2  # the driver submits this many steps ahead before it reads a step's metrics
LIVENESS_CHECK_S = 5.0  # how often a wait on a compiled step checks that its actors are alive


@ray.remote(enable_tensor_transport=True)
class PartActor:
    """Hosts one part of the population and runs its methods."""

    def __init__(self, plugins: list[str], spec: bytes, threads: int, profile: bool):
        """``spec`` is the part's PartSpec, pickled: opened once the plugins that define its terms and model
        are imported in this process too."""
        torch.set_num_threads(threads)
        load_plugins(plugins)
        self.device = torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")
        self.part = build_part(cloudpickle.loads(spec), self.device)
        self.profile = profile
        self.busy: dict[str, list[float]] = collections.defaultdict(list)
        self.outbox: tuple = ()

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

    def ready(self) -> dict[str, str]:
        """Where this part runs: its node and placement group (a liveness probe too)."""
        context = ray.get_runtime_context()
        return {"node": context.get_node_id(), "placement_group": context.get_placement_group_id()}

    def call(self, method: str, *args):
        """Anything outside the hot path: begin_epoch, save, load."""
        return getattr(self.part, method)(*args)


class RemotePart:
    """An actor with its part's interface for ``population_step``: each method returns futures, graph nodes
    (``tick`` given: tracing a compiled graph) or direct-transport futures (``tensor_transport`` given)."""

    def __init__(self, actor, cls: type, members: int, tick: Any = None, tensor_transport: str | None = None):
        self.actor, self.cls, self.members = actor, cls, members
        self.tick, self.tensor_transport = tick, tensor_transport

    def __getattr__(self, method: str) -> Callable:
        fn = getattr(self.cls, method)
        count = num_returns(fn, self.members)
        return lambda *args: nest(self._submit(method, fn, count, args), fn, self.members)

    def _submit(self, method: str, fn: Callable, count: int, args: tuple):
        if self.tick is not None:
            if any(isinstance(a, DAGNode) for a in args):
                return self.actor.run.options(num_returns=count).bind(method, *args)
            return self.actor.run_after.options(num_returns=count).bind(self.tick, method, *args)
        if self.tensor_transport is None:
            return self.actor.run.options(num_returns=count).remote(method, *args)
        # One value per call: the first from the call itself, the rest taken one by one; only a part's own
        # metrics (plain values for the driver) go by the object store.
        transports = [None if name == "metrics" else self.tensor_transport for name in return_names(fn, self.members)]
        refs = [self.actor.run_one.options(tensor_transport=transports[0]).remote(method, *args)]
        refs += [self.actor.take.options(tensor_transport=t).remote(i) for i, t in enumerate(transports[1:], 1)]
        return refs if count > 1 else refs[0]


class CallSteps:
    """Each step a fresh set of actor calls (object store or direct transport)."""

    def __init__(self, population: Population):
        self.population = population

    def submit(self) -> StepMetrics:
        return population_step(self.population)

    def result(self, future: StepMetrics) -> list[dict]:
        return ray.get(future.in_part_order())

    def close(self) -> None:
        pass


class CompiledSteps:
    """The population step traced once into a Ray compiled graph and executed per batch."""

    def __init__(self, actors: list, ids: list[PartId], members: int, needs):
        with InputNode() as tick:
            parts = [RecordingPart(a, part_class(pid), members, tick) for a, pid in zip(actors, ids)]
            metrics = population_step(Population.of(ids, parts, needs)).in_part_order()
            # A compiled graph may have no dangling nodes: outputs no part consumes (say, a None message)
            # go to the driver, after the metrics.
            used = {id(n) for p in parts for n in p.consumed} | {id(m) for m in metrics}
            leaves = [n for p in parts for n in p.produced if id(n) not in used]
            graph = MultiOutputNode(metrics + leaves)
        self.count, self.actors = len(metrics), actors
        self.graph = graph.experimental_compile(_max_inflight_executions=STEPS_IN_FLIGHT + 1)
        self.ticks = 0

    def submit(self):
        self.ticks += 1
        return self.graph.execute(self.ticks)

    def result(self, future) -> list[dict]:
        """Wait for a step however long it takes, checking every few seconds that no actor has died
        (a dead actor's channel would otherwise only show as a timeout)."""
        while True:
            try:
                return ray.get(future, timeout=LIVENESS_CHECK_S)[: self.count]
            except RayChannelTimeoutError:
                try:  # a dead actor raises RayActorError here; a busy one merely times out
                    ray.get([a.ready.remote() for a in self.actors], timeout=LIVENESS_CHECK_S)
                except GetTimeoutError:
                    pass

    def close(self) -> None:
        """Called once the actors are gone; Ray logs each dead actor's loop as an error, which it is not here."""
        quiet = logging.getLogger("ray.dag.compiled_dag_node")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            self.graph.teardown()
        finally:
            quiet.setLevel(level)


class RecordingPart(RemotePart):
    """A RemotePart that binds graph nodes with tensor transport and remembers which it made and used."""

    def __init__(self, actor, cls, members, tick):
        super().__init__(actor, cls, members, tick=tick)
        self.produced, self.consumed = [], []

    def _submit(self, method, fn, count, args):
        self.consumed += [a for a in args if isinstance(a, DAGNode)]
        node = super()._submit(method, fn, count, args)
        nodes = [n.with_tensor_transport() for n in (node if isinstance(node, (list, tuple)) else [node])]
        self.produced += nodes
        return nodes if count > 1 else nodes[0]


class RayEngine:
    def __init__(self, config: TrainConfig, plan: PopulationPlan, profile: bool = False):
        connect(config.ray.address)
        self.config, self.plan = config, plan
        self.ids = parts_of(config)
        bundles = part_bundles(config)
        self.transport = config.ray.transport if config.ray.transport != "auto" else auto_transport(bundles)
        if self.transport == "direct":
            check_direct(bundles)  # before anything is reserved or started
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

    def handles(self, **mode: Any) -> list[RemotePart]:
        return [RemotePart(a, part_class(pid), len(self.config.members), **mode) for a, pid in zip(self.actors, self.ids)]

    def _make_steps(self):
        needs = self.config.method.method.needs
        if self.transport == "compiled":
            return CompiledSteps(self.actors, self.ids, len(self.config.members), needs)
        mode = {}
        if self.transport == "direct":
            nccl = any(gpu_shares(self.resources.bundles))
            create_collective_group(self.actors, backend="nccl" if nccl else "torch_gloo")
            mode = {"tensor_transport": "nccl" if nccl else "gloo"}
        return CallSteps(Population.of(self.ids, self.handles(**mode), needs))

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

    def train_epoch(self, steps: int, on_step: Callable[[list[dict]], None]) -> dict[str, dict[str, float]]:
        meters = EpochMeters([pid.name for pid in self.ids])
        pending = collections.deque()

        def collect():
            metrics = self._guard(lambda: self.steps.result(pending.popleft()))
            meters.add(metrics)
            on_step(metrics)

        for _ in range(steps):
            pending.append(self._guard(self.steps.submit))
            if len(pending) > STEPS_IN_FLIGHT:
                collect()
        while pending:
            collect()
        return meters.result()

    def evaluate(self, split: Split) -> dict[str, dict[str, float]]:
        """Evaluation batches by plain calls whatever the transport: the driver reads their logits."""
        population = Population.of(self.ids, self.handles(), self.config.method.method.needs)
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


def gpu_shares(bundles: list[dict[str, float]]) -> list[float]:
    return [b.get("GPU", 0) for b in bundles]


def auto_transport(bundles: list[dict[str, float]]) -> str:
    """``direct`` (NCCL) when every part has its own GPU (not measured yet); on a shared GPU and on CPUs,
    what ``experiments/bench_engine.py`` measured fastest (README, "What the engines cost")."""
    gpus = gpu_shares(bundles)
    if gpus and min(gpus) >= 1:
        return "direct"
    return "compiled" if any(gpus) else "object_store"


def check_direct(bundles: list[dict[str, float]]) -> None:
    """NCCL needs one whole GPU per part (two ranks on one GPU are refused: NCCL_ERROR_INVALID_USAGE, measured
    on an H100); gloo needs every part on the CPU."""
    gpus = gpu_shares(bundles)
    if any(gpus) and min(gpus) < 1:
        raise ConfigError(
            f"ray.transport=direct: the parts' GPU shares are {gpus}; NCCL needs one whole GPU per part, members "
            "and fusion alike. Set ray.num_gpus_per_member=1 and ray.num_gpus_fusion=1 on a cluster with that many "
            "GPUs, or use ray.transport=compiled (measured fastest on a shared GPU) or object_store")

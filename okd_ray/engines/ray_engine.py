"""The Ray engine: one actor per member, one for the fusion; the same population step as the local engine.

The step code (``population/step.py``) runs unchanged on handles whose methods return Ray futures: a
future passed to another actor's method is resolved there, so feature maps, logits and the fusion's
gradients go actor to actor. Two transports carry them:

- ``object_store``: plain actor calls, tensors through Ray's object store;
- ``compiled``: the step is traced once into a Ray compiled graph (``ray.dag``) whose tensors move over
  shared-memory channels on one node, or NCCL between GPUs.
"""

from __future__ import annotations

import collections
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

import ray
import torch
from ray.dag import InputNode, MultiOutputNode
from ray.exceptions import GetTimeoutError, RayActorError, RayChannelError, RayChannelTimeoutError, RayTaskError

from okd_ray.config import TrainConfig
from okd_ray.errors import OkdRayError, PopulationLost
from okd_ray.metrics import Meter, test_accuracy
from okd_ray.population import Fusion, Member, PopulationPlan, population_eval, population_step

from .resources import PartResources, connect, reserve

STEPS_IN_FLIGHT = 2  # the driver submits this many steps ahead before it reads a step's metrics
LIVENESS_CHECK_S = 5.0  # how often a wait on a compiled step checks that its actors are alive


@ray.remote
class PartActor:
    """Hosts one Member (``index`` set) or the Fusion (``index`` None) and exposes their methods."""

    def __init__(self, config: dict, plan: PopulationPlan, index: int | None, threads: int):
        torch.set_num_threads(threads)
        config = TrainConfig.model_validate(config)
        self.device = torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")
        self.part = Fusion(config, plan, self.device) if index is None else Member(config, index, plan, self.device)
        self.busy: dict[str, list[float]] = collections.defaultdict(list)

    @contextlib.contextmanager
    def timed(self, name: str):
        """Seconds spent computing (not waiting for inputs), per call: the benchmarks' compute time."""
        started = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.busy[name].append(time.perf_counter() - started)

    def compute_seconds(self) -> dict[str, list[float]]:
        busy, self.busy = dict(self.busy), collections.defaultdict(list)
        return busy

    def ready(self) -> bool:
        return True

    def forward(self, _tick: Any = None):
        with self.timed("forward"):
            return self.part.forward()

    def update(self, *args):
        with self.timed("update"):
            return self.part.update(*args)

    def step(self, *args):
        with self.timed("step"):
            return self.part.step(*args)

    def eval_next(self):
        return self.part.eval_next()

    def eval(self, *maps):
        return self.part.eval(*maps)

    def call(self, method: str, *args):
        """Anything outside the hot path: begin_epoch, begin_eval, state_dict, load_state_dict."""
        return getattr(self.part, method)(*args)


class RemotePart:
    """Gives an actor the Member/Fusion interface for ``population_step``: each call returns futures
    (``.remote``) or, while a compiled graph is traced, graph nodes (``.bind``)."""

    def __init__(self, actor, returns: dict[str, int], tick: Any = None):
        self.actor, self.returns, self.tick = actor, returns, tick

    def _call(self, name: str, *args):
        method = getattr(self.actor, name).options(num_returns=self.returns.get(name, 1))
        if self.tick is None:
            return method.remote(*args)
        return method.bind(*args)

    def forward(self):
        return self._call("forward", *([self.tick] if self.tick is not None else []))

    def update(self, *args):
        return self._call("update", *args)

    def step(self, *args):
        return self._call("step", *args)

    def eval_next(self):
        return self._call("eval_next")

    def eval(self, *maps):
        return self._call("eval", *maps)

    def begin_eval(self):
        return self.actor.call.remote("begin_eval")


class ObjectStoreSteps:
    """Each step is a fresh set of actor calls; futures carry the tensors through the object store."""

    def __init__(self, members: list[RemotePart], fusion: RemotePart | None, spec):
        self.members, self.fusion, self.spec = members, fusion, spec

    def submit(self):
        return population_step(self.members, self.fusion, self.spec)

    def result(self, future) -> tuple[list[dict], dict | None]:
        member_metrics, fusion_metrics = future
        return ray.get(member_metrics), (ray.get(fusion_metrics) if fusion_metrics is not None else None)

    def close(self) -> None:
        pass


class CompiledSteps:
    """The population step traced once into a Ray compiled graph and executed per batch."""

    def __init__(self, actors: list, fusion_actor, returns: dict[str, int], spec):
        with InputNode() as tick:
            members = [RecordingPart(a, returns, tick) for a in actors]
            fusion = RecordingPart(fusion_actor, returns, tick) if fusion_actor is not None else None
            member_metrics, fusion_metrics = population_step(members, fusion, spec)
            outputs = member_metrics + ([fusion_metrics] if fusion_metrics is not None else [])
            # A compiled graph may have no dangling nodes: unused outputs (say, a member's labels) go to the driver.
            parts = members + ([fusion] if fusion is not None else [])
            used = {id(n) for p in parts for n in p.consumed} | {id(o) for o in outputs}
            leaves = [n for p in parts for n in p.produced if id(n) not in used]
            self.count = len(member_metrics)
            self.has_fusion = fusion_metrics is not None
            graph = MultiOutputNode(outputs + leaves)
        self.actors = actors + ([fusion_actor] if fusion_actor is not None else [])
        self.graph = graph.experimental_compile(_max_inflight_executions=STEPS_IN_FLIGHT + 1)
        self.ticks = 0

    def submit(self):
        self.ticks += 1
        return self.graph.execute(self.ticks)

    def result(self, future) -> tuple[list[dict], dict | None]:
        """Wait for a step however long it takes, checking every few seconds that no actor has died
        (a dead actor's channel would otherwise only show as a timeout)."""
        while True:
            try:
                values = ray.get(future, timeout=LIVENESS_CHECK_S)
                break
            except RayChannelTimeoutError:
                try:  # a dead actor raises RayActorError here; a busy one merely times out
                    ray.get([a.ready.remote() for a in self.actors], timeout=LIVENESS_CHECK_S)
                except GetTimeoutError:
                    pass
        return values[: self.count], (values[self.count] if self.has_fusion else None)

    def close(self) -> None:
        self.graph.teardown()


class RecordingPart(RemotePart):
    """A RemotePart that binds graph nodes with tensor transport and remembers which it made and used."""

    def __init__(self, actor, returns, tick):
        super().__init__(actor, returns, tick)
        self.produced, self.consumed = [], []

    def _call(self, name: str, *args):
        self.consumed += [a for a in args if isinstance(a, ray.dag.DAGNode)]
        node = super()._call(name, *args)
        nodes = list(node) if isinstance(node, (list, tuple)) else [node]
        nodes = [n.with_tensor_transport() for n in nodes]
        self.produced += nodes
        return nodes if isinstance(node, (list, tuple)) else nodes[0]


TRANSPORTS = {"object_store": ObjectStoreSteps, "compiled": CompiledSteps}


class RayEngine:
    def __init__(self, config: TrainConfig, plan: PopulationPlan):
        connect(config.ray.address)
        self.config, self.plan, self.spec = config, plan, config.method.spec
        count = len(config.members)
        self.names = [f"m{k}:{m.arch}" for k, m in enumerate(config.members)]
        self.parts = self.names + (["fused"] if self.spec.fusion else [])  # in all_actors' order
        self.resources: PartResources = reserve(config, count)
        raw = config.model_dump(mode="json")

        run_id = uuid.uuid4().hex[:8]

        def start(part: int, index: int | None):
            options, threads = self.resources.options(part)
            name = f"okd-{run_id}-{'fusion' if index is None else f'm{index}'}"  # findable: ray.get_actor(name)
            return PartActor.options(name=name, **options).remote(raw, plan, index, threads)

        self.actors = [start(k, k) for k in range(count)]
        self.fusion_actor = start(count, None) if self.spec.fusion else None
        self.all_actors = self.actors + ([self.fusion_actor] if self.fusion_actor is not None else [])
        self.returns = {"forward": 4, "step": count + 2, "eval_next": 3}
        self._guard(lambda: ray.get([a.ready.remote() for a in self.all_actors]))
        # auto: object_store. Measured on CPU (experiments/bench_engine.py), a compiled graph doubled the
        # members' compute time; its NCCL path for GPUs is there to choose, but was not measured here.
        transport = "object_store" if config.ray.transport == "auto" else config.ray.transport
        if transport == "compiled":
            self.steps = self._guard(lambda: CompiledSteps(self.actors, self.fusion_actor, self.returns, self.spec))
        else:
            self.steps = ObjectStoreSteps(
                [RemotePart(a, self.returns) for a in self.actors],
                RemotePart(self.fusion_actor, self.returns) if self.fusion_actor else None, self.spec,
            )
        self.transport = transport

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
        return self._guard(lambda: ray.get([a.call.remote(method, *args) for a in self.all_actors]))

    def begin_epoch(self, epoch: int) -> dict[str, dict[str, float]]:
        lrs = self._call_all("begin_epoch", epoch)
        return dict(zip(self.parts, lrs))

    def train_epoch(self, steps: int, on_step: Callable[[int], None]) -> dict[str, dict[str, float]]:
        meters = {name: Meter() for name in self.parts}
        pending = collections.deque()

        def collect():
            member_metrics, fusion_metrics = self._guard(lambda: self.steps.result(pending.popleft()))
            for name, values in zip(self.names, member_metrics):
                meters[name].add(values)
            if fusion_metrics is not None:
                meters["fused"].add(fusion_metrics)
            on_step(1)

        for _ in range(steps):
            pending.append(self._guard(self.steps.submit))
            if len(pending) > STEPS_IN_FLIGHT:
                collect()
        while pending:
            collect()
        return {name: meter.result() for name, meter in meters.items()}

    def evaluate(self) -> dict[str, dict[str, float]]:
        members = [RemotePart(a, self.returns) for a in self.actors]
        fusion = RemotePart(self.fusion_actor, self.returns) if self.fusion_actor is not None else None
        batches = population_eval(members, fusion, self.plan.num_test_batches)
        resolved = self._guard(lambda: [
            (ray.get(labels), ray.get(logits), ray.get(fused) if fused is not None else None)
            for labels, logits, fused in batches
        ])
        return test_accuracy(resolved, self.names)

    def state_dict(self) -> dict:
        states = self._call_all("state_dict")
        return {"members": states[: len(self.actors)], "fusion": states[len(self.actors)] if self.fusion_actor else None}

    def load_state_dict(self, state: dict) -> None:
        refs = [a.call.remote("load_state_dict", s) for a, s in zip(self.actors, state["members"])]
        if self.fusion_actor is not None:
            refs.append(self.fusion_actor.call.remote("load_state_dict", state["fusion"]))
        self._guard(lambda: ray.get(refs))

    def close(self) -> None:
        try:
            self.steps.close()
        except Exception:  # a graph whose actors died cannot tear down cleanly; the actors go anyway
            pass
        for actor in self.all_actors:
            ray.kill(actor)
        self.resources.release()

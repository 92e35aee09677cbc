"""``compiled``: the population step traced once into a Ray compiled graph (``ray.dag``) and executed per batch;
its tensors move over shared-memory channels on one node, or NCCL between GPUs."""

from __future__ import annotations

import logging

import ray
import ray.util.serialization
import torch
from ray.dag import DAGNode, InputNode, MultiOutputNode

from okd_ray.methods import Need
from okd_ray.population import Population, part_class, population_step

from .handles import RemotePart
from .transport import STEPS_IN_FLIGHT, Bundles, DriverSteps, ShardParts


class Compiled(DriverSteps):
    """The population step traced once into a Ray compiled graph and executed per batch."""

    # A graceful teardown with the actors up can hang on their channel loops (seen: minutes, actors busy-polling,
    # after a clean end); they are killed first, and the teardown is then immediate.
    keeps_hosts = False

    @staticmethod
    def check(bundles: Bundles) -> None:
        pass  # one node's shared memory, or NCCL between GPUs: Ray's compiled graphs choose

    def __init__(self, shards: list[ShardParts], members: int, needs: frozenset[Need], bundles: Bundles):
        with InputNode() as tick:
            parts, done = [], []
            for shard in shards:  # one graph over every shard
                recording = [
                    RecordingPart(a, part_class(pid), members, tick) for a, pid in zip(shard.actors, shard.ids)
                ]
                done += population_step(Population.of(shard.ids, recording, needs)).in_part_order()
                parts += recording
            # A compiled graph may have no dangling nodes: outputs no part consumes (say, a None message)
            # go to the driver, after the done markers.
            used = {id(n) for p in parts for n in p.consumed} | {id(m) for m in done}
            leaves = [n for p in parts for n in p.produced if id(n) not in used]
            graph = MultiOutputNode(done + leaves)
        self.count = len(done)
        self.graph = graph.experimental_compile(_max_inflight_executions=STEPS_IN_FLIGHT + 1)
        self.ticks = 0

    def submit(self):
        self.ticks += 1
        return self.graph.execute(self.ticks)

    def result(self, future) -> list:
        """Wait for a step however long it takes (``-1``: no timeout; a timed-out CompiledDAGRef cannot be read
        again). A dead actor ends its execution loop, and Ray's monitor then tears the graph down, which fails
        this read with a channel error."""
        return ray.get(future, timeout=-1)[: self.count]

    def close(self) -> None:
        """Called once the actors are gone; Ray logs each dead actor's loop as an error, which it is not here."""
        quiet = logging.getLogger("ray.dag.compiled_dag_node")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            self.graph.teardown()
        finally:
            quiet.setLevel(level)
            forget_tensor_serializer()


def forget_tensor_serializer() -> None:
    """A compiled graph registers a serializer for torch.Tensor in every process it touches (the driver and its
    actors, whose hosts are not kept: ``keeps_hosts``), and no teardown removes it. Left in the driver, it serializes
    every later tensor the driver sends (the data set handed to the next population) as the graph's channels do:
    measured here, the next population of the process no longer equalled the local engine."""
    ray.util.serialization.deregister_serializer(torch.Tensor)


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

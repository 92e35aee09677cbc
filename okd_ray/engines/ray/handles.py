"""A part's interface on a Ray actor, for ``population_step``: its methods return futures, graph nodes or
direct-transport futures, so the step code is the Ray dataflow. How many values each call returns follows from
the parts' declared return types (``population/protocol``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.dag import DAGNode

from okd_ray.population.protocol import nest, num_returns, return_names


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
        # One value per call: the first from the call itself, the rest taken one by one; only a part's done
        # marker (a plain value for the driver) goes by the object store.
        transports = [None if name == "done" else self.tensor_transport for name in return_names(fn, self.members)]
        refs = [self.actor.run_one.options(tensor_transport=transports[0]).remote(method, *args)]
        refs += [self.actor.take.options(tensor_transport=t).remote(i) for i, t in enumerate(transports[1:], 1)]
        return refs if count > 1 else refs[0]

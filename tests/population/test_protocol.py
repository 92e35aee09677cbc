"""The parts' declared returns: what the engines derive their Ray return counts from; and the step's rule: it passes
messages on and never reads them."""

import pytest
import torch

from okd_ray.config import load_config
from okd_ray.methods import BUILT_IN_METHODS
from okd_ray.population import (
    Fusion,
    Member,
    Population,
    Trunk,
    build_part,
    part_class,
    parts_of,
    plan_population,
    population_eval,
    population_step,
)
from okd_ray.population.protocol import (
    FusedMessage,
    FusionStep,
    MemberForward,
    RingMessage,
    flatten,
    nest,
    num_returns,
    return_names,
)


def test_return_counts_follow_the_declared_types():
    assert num_returns(Member.forward, 3) == 3  # ring message, fusion input, the message to every peer
    assert num_returns(Member.update, 3) == 2  # the done marker, gradient for the trunk
    assert num_returns(Fusion.step, 3) == 4  # the done marker, then a message for each of the 3 members
    assert return_names(Fusion.step, 2) == ["done", "to_members", "to_members"]
    assert (
        num_returns(Trunk.forward, 3) == 3 and num_returns(Member.begin_eval, 3) == 1
    )  # shared features for each member


def test_flatten_and_nest_are_inverse():
    t = torch.ones(2)
    step = FusionStep(0, (FusedMessage(t, t, None), FusedMessage(t, 2 * t, t)))
    flat = flatten(step, Fusion.step)
    assert len(flat) == 3 and flat[0] == 0 and isinstance(flat[2], FusedMessage)
    assert nest(list(flat), Fusion.step, 2) == step
    forward = MemberForward(RingMessage(t, None), None, None)
    assert nest(list(flatten(forward, Member.forward)), Member.forward, 2) == forward


class Opaque:
    """A message as three of the step's four modes hold it: a Ray future (object_store, direct), a compiled graph's
    node, collective's placeholder (``Owned``). Passing it on is all the step may do; reading its value (a branch on
    it, a comparison, a length, a field it does not declare) raises."""

    def __init__(self, what: str):
        self.what = what

    def _read(self, *args, **kwargs):
        raise AssertionError(f"population_step read {self.what}: it is a future or a graph node on Ray")

    __bool__ = __len__ = __iter__ = __getitem__ = __eq__ = __lt__ = __float__ = __int__ = __index__ = _read
    __hash__ = None

    def __getattr__(self, name: str):
        self._read()


class Recording:
    """A part's handle whose methods return what a Ray handle's return: the declared NamedTuple (``nest``) of
    opaque values, one per Ray return. It checks that every argument is a message passed on, or None."""

    def __init__(self, cls: type, name: str, members: int, calls: list[str]):
        self.cls, self.name, self.members, self.calls = cls, name, members, calls

    def __getattr__(self, method: str):
        function = getattr(self.cls, method)

        def call(*args):
            assert all(a is None or isinstance(a, Opaque) for a in args), (self.name, method, args)
            self.calls.append((f"{self.name}.{method}", len(args)))
            n = num_returns(function, self.members)
            flat = [Opaque(f"{self.name}.{method}()'s return {i}") for i in range(n)]
            return nest(flat if n > 1 else flat[0], function, self.members)

        return call


class Calls:
    """A real part whose method calls are recorded, as (part.method, number of arguments)."""

    def __init__(self, part, name: str, calls: list):
        self.part, self.name, self.calls = part, name, calls

    def __getattr__(self, method: str):
        def call(*args):
            self.calls.append((f"{self.name}.{method}", len(args)))
            return getattr(self.part, method)(*args)

        return call


@pytest.mark.parametrize("method", sorted(BUILT_IN_METHODS))
def test_the_step_passes_messages_on_and_never_reads_them(method):
    """The rule ARCHITECTURE.md states: population_step and population_eval run on plain objects (the local engine)
    and on futures, graph nodes and placeholders (Ray), so they may route messages and never read one. Every
    built-in method's step and evaluation run over recording handles, where reading a message raises, and over the
    real parts: both make the same calls with as many arguments (an ``is None`` on a message, which no handle can
    refuse, takes another path where a real message is None)."""
    config = load_config(
        None,
        [
            f"method.name={method}",
            "members=[cnn16, cnn16, cnn16]",
            "data.train_limit=64",
            *(["trunk_stages=1"] if method in ("one", "okddip", "pcl") else []),
        ],
    )
    ids, needs, members = parts_of(config), config.method.method.needs, len(config.members)
    recorded, called = [], []
    handles = [Recording(part_class(pid), pid.name, members, recorded) for pid in ids]
    population = Population.of(ids, handles, needs)
    population_step(population)
    population_eval(population, 2)
    plan = plan_population(config)
    parts = [build_part(spec, torch.device("cpu"), plan.dataset) for spec in plan.specs]
    for part in parts:
        part.begin_epoch(0)
    population = Population.of(ids, [Calls(p, pid.name, called) for p, pid in zip(parts, ids)], needs)
    population_step(population)
    for part in parts:
        part.begin_eval("test")
    population_eval(population, 2)
    assert called == recorded
    assert sum(name.endswith(".update") for name, _ in called) == members + bool(config.trunk_stages)


def test_a_step_that_reads_a_message_fails_there():
    with pytest.raises(AssertionError, match="read m0.forward"):
        if Opaque("m0.forward()'s return 0"):
            pass

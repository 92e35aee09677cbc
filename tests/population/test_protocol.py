"""The parts' declared returns: what the engines derive their Ray return counts from."""

import torch

from okd_ray.population import Fusion, Member, Trunk
from okd_ray.population.protocol import (FusedMessage, FusionStep, MemberForward, RingMessage, flatten, nest,
                                         num_returns, return_names)


def test_return_counts_follow_the_declared_types():
    assert num_returns(Member.forward, 3) == 3  # ring message, fusion input, the message to every peer
    assert num_returns(Member.update, 3) == 2  # the done marker, gradient for the trunk
    assert num_returns(Fusion.step, 3) == 4  # the done marker, then a message for each of the 3 members
    assert return_names(Fusion.step, 2) == ["done", "to_members", "to_members"]
    assert num_returns(Trunk.forward, 3) == 3 and num_returns(Member.begin_eval, 3) == 1  # shared features for each member


def test_flatten_and_nest_are_inverse():
    t = torch.ones(2)
    step = FusionStep(0, (FusedMessage(t, t, None), FusedMessage(t, 2 * t, t)))
    flat = flatten(step, Fusion.step)
    assert len(flat) == 3 and flat[0] == 0 and isinstance(flat[2], FusedMessage)
    assert nest(list(flat), Fusion.step, 2) == step
    forward = MemberForward(RingMessage(t, None), None, None)
    assert nest(list(flatten(forward, Member.forward)), Member.forward, 2) == forward

"""A population's deployed networks as one module, from a normalised image batch to one part's logits.

It holds the parts' own evaluation modules and calls them as ``population_eval`` and ``metrics.accuracy`` do: the
trunk's deployed stages once (PCL's temporal mean of them, where a hook keeps one), each member's deployed network
on their output (PCL's temporal mean; the transfer layer only trains), then the part's head: a member's logits,
the ensemble's mean, the fusion's ``Fuser.eval`` on the members' maps, or ONE's gated teacher. What crosses from one
part to another is laid out as it leaves a part (``outgoing``: contiguous), since kernels round differently on other
layouts (a trunk's ResNet stages can give a channels-last map). Tests hold its logits to the evaluation's bit for
bit, so a loaded model cannot drift from what the run reported.
"""

from __future__ import annotations

import torch
from torch import nn

from okd_ray.metrics import ensemble_logits, teacher_logits

from .fusion import Fusion
from .member import Member
from .outgoing import map_tensors
from .trunk import Trunk


def sent(value):
    """``value`` laid out as a part sends it (``outgoing``, less the detach: a loaded model may be fine-tuned)."""
    return map_tensors(value, torch.Tensor.contiguous)


class Deployed(nn.Module):
    def __init__(self, members: list[nn.Module], head: nn.Module, trunk: nn.Module | None = None):
        super().__init__()
        self.trunk, self.members, self.head = trunk, nn.ModuleList(members), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(x) if self.trunk is not None else x  # the trunk's own, for its gate
        shared = sent(features) if self.trunk is not None else x
        outputs = [sent(member(shared)) for member in self.members]
        return self.head(features, [feature for feature, _ in outputs], [logits for _, logits in outputs])


class MemberLogits(nn.Module):
    def forward(self, features, maps, logits):
        return logits[0]


class EnsembleLogits(nn.Module):
    def forward(self, features, maps, logits):
        return ensemble_logits(logits)


class FusedLogits(nn.Module):
    """The fusion part's classifier: its ``Fuser.eval`` on the members' maps, with the fuser's modules as its own."""

    def __init__(self, fusion: Fusion):
        super().__init__()
        self.fuser, self.fusion = fusion.fuser, nn.ModuleDict(fusion.modules)

    def forward(self, features, maps, logits):
        return self.fuser.eval(maps)


class TeacherLogits(nn.Module):
    """ONE's gated teacher: the trunk's gate on its features (as the trunk computes it) weighs the members' logits."""

    def __init__(self, gate: nn.Module):
        super().__init__()
        self.gate = gate

    def forward(self, features, maps, logits):
        return teacher_logits(sent(self.gate(features)), logits)


def deploy(kind: str, members: list[Member], trunk: Trunk | None = None, fusion: Fusion | None = None) -> Deployed:
    """The ``kind`` (``member``: the one member given, ``ensemble``, ``fused``, ``teacher``) of loaded parts, in
    eval mode; it shares their modules."""
    head = {
        "member": MemberLogits,
        "ensemble": EnsembleLogits,
        "fused": lambda: FusedLogits(fusion),
        "teacher": lambda: TeacherLogits(trunk.gate),
    }[kind]()
    return Deployed([m.deployed for m in members], head, trunk.deployed if trunk is not None else None).eval()

"""ONE (Lan et al., NeurIPS 2018): branches on a shared trunk; a gate weights their logits into a teacher.

As in the official code (Lan1991Xu/ONE_NeurIPS2018): the gate is pool → linear → BN → ReLU → softmax
over branches on the trunk's features; the teacher Σ g_k·z_k gets its own cross-entropy, whose gradient
reaches the branches, the gate and the trunk; each branch distils from the detached teacher, T = 3, T²,
weight ramped up over 80 epochs.

Each branch computes the teacher from its own live logits and gate column and the others' detached, so
the branches' gradients on the gate and the logits add up to the single graph's exactly.
"""

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .kl import distill_kl
from .term import Batch, Need, RampedSettings, Term


class Gate(nn.Module):
    """Weights over K branches from the trunk's (C, H, W) features."""

    def __init__(self, channels: int, branches: int):
        super().__init__()
        self.linear = nn.Linear(channels, branches)
        self.bn = nn.BatchNorm1d(branches)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.softmax(F.relu(self.bn(self.linear(features.mean((2, 3))))), dim=1)


def gated_teacher(batch: Batch) -> torch.Tensor:
    """Σ_k g_k·z_k with this branch's gate column and logits live, the others' detached."""
    logits = [batch.logits if k == batch.index else z for k, z in enumerate(batch.all_logits())]
    gate = batch.gate
    weights = [gate[:, k : k + 1] if k == batch.index else gate[:, k : k + 1].detach() for k in range(len(logits))]
    return sum(w * z for w, z in zip(weights, logits))


class TeacherCE(Term):
    name = "teacher_ce"
    needs = frozenset({Need.GATE, Need.PEER_LOGITS})

    def loss(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(gated_teacher(batch), batch.labels)


class TeacherKL(Term):
    name = "teacher_kl"
    needs = frozenset({Need.GATE, Need.PEER_LOGITS})

    class Settings(RampedSettings):
        temperature: float = Field(3.0, gt=0)
        rampup_epochs: float = Field(80, ge=0)

    def loss(self, batch: Batch) -> torch.Tensor:
        return distill_kl(batch.logits, gated_teacher(batch), self.settings.temperature)

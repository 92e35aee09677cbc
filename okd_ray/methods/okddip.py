"""OKDDip (Chen et al., AAAI 2020; DefangChen/OKDDip, ``models/model_cifar/resnet_GL.py`` and ``train_GL.py``):
online distillation with diverse peers and a group leader.

Members 0 … K−2 are the peers, member K−1 the group leader. Query and key projections (no bias), shared by all
peers, map each peer's pooled last feature map; their dot products, softmaxed over the peers, weight the peers'
logits into each peer's own target, its own logits included. Targets are not detached, so the distillation
loss trains the projections and reaches every peer's logits and features. The leader distils from the peers'
mean logits (not detached either). The fusion part holds the shared projections and computes this loss over
all members at once, as the official single graph does; each member adds its CE, and the gradients the
fusion sends back:

    L = Σ_peers CE + CE(leader) + w(e) · [Σ_a T²·KL(target_a ‖ z_a) + T²·KL(mean_a z_a ‖ z_leader)],

with T = 3 and w(e) = exp(−5(1 − e/80)²), α = 1. The official KL adds 1e-7 to the target's softmax; ours does
not (the same 1e-7 difference the FFL audit measured).
"""

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from okd_ray.errors import ConfigError

from .kl import distill_kl
from .term import Batch, Fuser, FuserStep, FusionOptimizerConfig, Need, RampedSettings, Term


def peer_targets(
    pooled: list[torch.Tensor], logits: list[torch.Tensor], query: nn.Module, key: nn.Module
) -> torch.Tensor:
    """B × C × P: each peer's attention-weighted sum of every peer's logits (the official ``x_m``)."""
    q = torch.stack([query(x) for x in pooled], 1)  # B × P × d
    k = torch.stack([key(x) for x in pooled], 1)
    attention = F.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)  # B × P × P, over the peers
    return torch.bmm(torch.stack(logits, -1), attention.transpose(1, 2))


class PeerAttention(Fuser):
    columns = ("group_kl", "leader_kl")

    def __init__(self, settings, shapes, num_classes):
        super().__init__(settings, shapes, num_classes)
        channels = shapes[0][0]
        self.query = nn.Linear(channels, channels // settings.factor, bias=False)
        self.key = nn.Linear(channels, channels // settings.factor, bias=False)

    def modules(self):
        return {"query": self.query, "key": self.key}

    def loss(self, maps, logits, labels, weight) -> FuserStep:
        T = self.settings.temperature
        peers, leader = logits[:-1], logits[-1]
        targets = peer_targets([m.mean((2, 3)) for m in maps[:-1]], peers, self.query, self.key)
        mean = torch.stack(peers, -1).mean(-1)
        group = sum(distill_kl(z, targets[:, :, a], T, detach_teacher=False) for a, z in enumerate(peers))
        losses = {"group_kl": group, "leader_kl": distill_kl(leader, mean, T, detach_teacher=False)}
        to_members = [targets[:, :, a] for a in range(len(peers))] + [mean]
        return FuserStep(losses, weight * (losses["group_kl"] + losses["leader_kl"]), to_members, None)


class AttentionKL(Term):
    """The member's side: its KL to the target the attention part made for it, reported, not stepped on here
    (its gradient comes back from the fusion part, where every member's logits meet)."""

    name = "attention_kl"
    needs = frozenset({Need.FUSION})
    fuser = PeerAttention

    class Settings(RampedSettings):
        temperature: float = Field(3.0, gt=0)
        rampup_epochs: float = Field(80, ge=0)  # the official --length
        factor: int = Field(8, ge=1)  # the projections map C channels to C // factor
        # The official code steps the projections with the networks' SGD (wd 5e-4); lr None: member 0's.
        fusion_optimizer: FusionOptimizerConfig = FusionOptimizerConfig(weight_decay=5e-4)

    @classmethod
    def check(cls, config) -> None:
        if len(config.members) < 3:
            raise ConfigError(
                f"members: okddip needs at least 3 members (2 peers and the group leader, the last), "
                f"got {len(config.members)}; add members"
            )
        if len({m.arch for m in config.members[:-1]}) != 1:
            raise ConfigError(
                "members: okddip's peers (every member but the last, the leader) share their "
                f"attention projections, so they need one architecture; got "
                f"{[m.arch for m in config.members[:-1]]}"
            )

    def loss(self, batch: Batch) -> torch.Tensor:
        return distill_kl(batch.logits, batch.fused_logits, self.settings.temperature).detach()

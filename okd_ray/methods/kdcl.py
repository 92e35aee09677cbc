"""KDCL (Guo et al., CVPR 2020): every member distils from an ensemble teacher built from all members' logits.

Variants: ``minlogit`` (per sample, each member's logits minus its target-class logit, the element-wise
minimum over members), ``naive`` (per sample, the logits of the member with the lowest cross-entropy) and
``mean``. The paper's Linear and General variants fit weights on held-out data and are not offered.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from .kl import distill_kl
from .term import Batch, Need, Term, TermSettings


def ensemble_teacher(logits: list[torch.Tensor], labels: torch.Tensor, variant: str) -> torch.Tensor:
    """The teacher's logits from every member's (N × C each), detached."""
    z = torch.stack([member.detach() for member in logits])  # K × N × C
    if variant == "mean":
        return z.mean(0)
    if variant == "minlogit":
        target = z.gather(2, labels.view(1, -1, 1).expand(len(z), -1, 1))
        return (z - target).min(0).values
    if variant == "naive":
        ce = torch.stack([F.cross_entropy(zk, labels, reduction="none") for zk in z])  # K × N
        return z.gather(0, ce.argmin(0).view(1, -1, 1).expand(1, -1, z.shape[2])).squeeze(0)
    raise ValueError(f"KDCL variant must be minlogit, naive or mean, not {variant!r}")


class EnsembleKL(Term):
    name = "ensemble_kl"
    needs = frozenset({Need.PEER_LOGITS})

    class Settings(TermSettings):
        variant: Literal["minlogit", "naive", "mean"] = "minlogit"
        temperature: float = Field(3.0, gt=0)  # our choice; the paper's value is not verified here

    def loss(self, batch: Batch) -> torch.Tensor:
        teacher = ensemble_teacher(batch.all_logits(), batch.labels, self.settings.variant)
        return distill_kl(batch.logits, teacher, self.settings.temperature)

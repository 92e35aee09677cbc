"""Distillation from the ring predecessor's logits: AFD's logit term, T²·KL(peer ‖ own) (Chung et al., 2020)."""

import torch
from pydantic import Field

from .kl import distill_kl
from .term import Batch, Need, Term, TermSettings


class RingKL(Term):
    name = "ring_kl"
    needs = frozenset({Need.RING_LOGITS})

    class Settings(TermSettings):
        temperature: float = Field(3.0, gt=0)  # FFL's code uses 3; AFD's own value is not verified

    def loss(self, batch: Batch) -> torch.Tensor:
        return distill_kl(batch.logits, batch.ring_logits, self.settings.temperature)

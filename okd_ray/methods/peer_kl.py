"""Deep mutual learning (Zhang et al., 2018): the mean of KL(peer ‖ own) over every other member."""

import torch
from pydantic import Field

from .kl import distill_kl
from .term import Batch, Need, Term, TermSettings


class PeerKL(Term):
    name = "peer_kl"
    needs = frozenset({Need.PEER_LOGITS})

    class Settings(TermSettings):
        temperature: float = Field(1.0, gt=0)

    def loss(self, batch: Batch) -> torch.Tensor:
        t = self.settings.temperature
        return torch.stack([distill_kl(batch.logits, peer, t) for peer in batch.peer_logits.values()]).mean()

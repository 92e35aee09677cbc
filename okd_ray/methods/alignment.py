"""Direct feature-map alignment to the ring predecessor (L1 or L2): the ablation AFD is compared against."""

from typing import Literal

import torch

from .term import Batch, Need, Term, TermSettings


def alignment_loss(own: torch.Tensor, peer: torch.Tensor, norm: str) -> torch.Tensor:
    """Mean absolute (``l1``) or squared (``l2``) difference to the peer's map; the peer is a fixed target."""
    diff = own - peer.detach()
    if norm == "l1":
        return diff.abs().mean()
    if norm == "l2":
        return diff.pow(2).mean()
    raise ValueError(f"alignment norm must be 'l1' or 'l2', not {norm!r}")


class Align(Term):
    name = "align"
    update = "feature"
    needs = frozenset({Need.RING_MAP})

    class Settings(TermSettings):
        norm: Literal["l1", "l2"] = "l1"

    def loss(self, batch: Batch) -> torch.Tensor:
        return alignment_loss(batch.public, batch.ring_map, self.settings.norm)

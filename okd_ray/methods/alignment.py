"""Direct feature-map alignment (L1 or L2): the ablation AFD is compared against."""

import torch


def alignment_loss(own: torch.Tensor, peer: torch.Tensor, norm: str) -> torch.Tensor:
    """Mean absolute (``l1``) or squared (``l2``) difference to the peer's map; the peer is a fixed target."""
    diff = own - peer.detach()
    if norm == "l1":
        return diff.abs().mean()
    if norm == "l2":
        return diff.pow(2).mean()
    raise ValueError(f"alignment norm must be 'l1' or 'l2', not {norm!r}")

"""The methods: pure loss functions and small modules, and the table that says which terms each method uses.

Adding a method means a loss module here and one row in ``METHODS``; the engines never change.
"""

from dataclasses import dataclass
from typing import Literal

from okd_ray.errors import ConfigError

from .adversarial import Discriminator, discriminator_loss, generator_loss
from .alignment import alignment_loss
from .fusion import FusionModule
from .kl import distill_kl
from .rampup import sigmoid_rampup
from .transfer import common_shape, transfer_layer


@dataclass(frozen=True)
class MethodSpec:
    """Which terms of the population step a method switches on."""

    logit_peers: Literal["none", "ring", "all"]  # whose logits a member distils from
    feature: Literal["none", "adversarial", "l1", "l2"]  # the feature-map term against the ring predecessor
    fusion: bool  # FFL's fusion module and its KL terms
    default_temperature: float = 1.0  # of the peer logit KL
    min_members: int = 1

    @property
    def needs_ring_maps(self) -> bool:
        return self.feature != "none"


METHODS: dict[str, MethodSpec] = {
    "vanilla": MethodSpec(logit_peers="none", feature="none", fusion=False),
    "dml": MethodSpec(logit_peers="all", feature="none", fusion=False, min_members=2),
    "l1": MethodSpec(logit_peers="ring", feature="l1", fusion=False, default_temperature=3.0, min_members=2),
    "l2": MethodSpec(logit_peers="ring", feature="l2", fusion=False, default_temperature=3.0, min_members=2),
    "afd": MethodSpec(logit_peers="ring", feature="adversarial", fusion=False, default_temperature=3.0, min_members=2),
    "ffl": MethodSpec(logit_peers="none", feature="none", fusion=True, min_members=2),
    "afd+ffl": MethodSpec(logit_peers="ring", feature="adversarial", fusion=True, default_temperature=3.0, min_members=2),
}


def get_method(name: str) -> MethodSpec:
    """The spec of ``name``, or an error that lists the valid names."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"method.name: unknown method {name!r}; valid: {', '.join(METHODS)}") from None


__all__ = [
    "METHODS",
    "MethodSpec",
    "get_method",
    "Discriminator",
    "discriminator_loss",
    "generator_loss",
    "alignment_loss",
    "FusionModule",
    "distill_kl",
    "sigmoid_rampup",
    "common_shape",
    "transfer_layer",
]

"""How one population step's tensors move between the part actors: one module per transport, behind the
protocol written once here, and one row of ``TRANSPORTS`` (``engine.py``).

A transport is built once the actors are up; it runs the population step (``submit``), hands back a step's
metrics in ``parts_of`` order (``result``) and tears down after the actors are gone (``close``). ``check``
refuses a placement it cannot serve before anything is reserved.
"""

from __future__ import annotations

from typing import Any, Protocol

from okd_ray.methods import Need
from okd_ray.population import PartId

Bundles = list[dict[str, float]]  # one resource bundle per part, in parts_of order
STEPS_IN_FLIGHT = 2  # the driver submits this many steps ahead before it reads a step's metrics


class Transport(Protocol):
    @staticmethod
    def check(bundles: Bundles) -> None:
        """Raise ConfigError for a placement this transport cannot serve."""

    def __init__(self, actors: list, ids: list[PartId], members: int, needs: frozenset[Need], bundles: Bundles):
        """Set up over started actors (a collective group, a compiled graph); errors surface as the actors'."""

    def submit(self) -> Any:
        """Start the next population step; returns what ``result`` waits on."""

    def result(self, future: Any) -> list[dict]:
        """The step's metrics, one dict per part in ``parts_of`` order."""

    def close(self) -> None:
        """Called once the actors are gone."""


def gpu_shares(bundles: Bundles) -> list[float]:
    return [b.get("GPU", 0) for b in bundles]


def auto_transport(bundles: Bundles) -> str:
    """``direct`` (NCCL) when every part has its own GPU (not measured yet); on a shared GPU and on CPUs,
    what ``experiments/bench_engine.py`` measured fastest (README, "What the engines cost")."""
    gpus = gpu_shares(bundles)
    if gpus and min(gpus) >= 1:
        return "direct"
    return "compiled" if any(gpus) else "object_store"

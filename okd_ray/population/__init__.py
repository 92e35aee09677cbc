"""The population: its parts (Member, Fusion, Trunk; plain PyTorch) and the one step every engine runs."""

from __future__ import annotations

import torch

from okd_ray.config import TrainConfig

from .fusion import Fusion
from .member import Member
from .part import Part
from .plan import PopulationPlan, load_dataset, plan_population
from .protocol import PartId, parts_of
from .step import Population, StepMetrics, population_eval, population_step
from .trunk import Trunk

__all__ = ["Fusion", "Member", "Part", "PartId", "Population", "PopulationPlan", "StepMetrics", "Trunk",
           "build_part", "load_dataset", "part_class", "parts_of", "plan_population", "population_eval",
           "population_step"]


def part_class(pid: PartId) -> type[Part]:
    return {"member": Member, "fused": Fusion, "trunk": Trunk}[pid.kind]


def build_part(config: TrainConfig, plan: PopulationPlan, pid: PartId, device: torch.device) -> Part:
    """The part ``pid`` of a run of ``config``, wherever it is built (in one process, or in its own actor)."""
    if pid.kind == "member":
        return Member(config, pid.index, plan, device)
    return part_class(pid)(config, plan, device)

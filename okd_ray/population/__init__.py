"""The population: its parts (Member, Fusion, Trunk; plain PyTorch) and the one step every engine runs."""

from __future__ import annotations

import torch

from okd_ray.data import Dataset
from okd_ray.execution import compile_modules, to_format

from .fusion import Fusion
from .member import Member
from .part import Part
from .plan import PopulationPlan, load_dataset, plan_population
from .protocol import PartId, parts_of
from .spec import FusionSpec, MemberSpec, PartSpec, TrunkSpec
from .step import Population, StepDone, epoch_metrics, population_eval, population_step
from .trunk import Trunk

__all__ = [
    "Fusion",
    "FusionSpec",
    "Member",
    "MemberSpec",
    "Part",
    "PartId",
    "PartSpec",
    "Population",
    "PopulationPlan",
    "StepDone",
    "Trunk",
    "TrunkSpec",
    "build_part",
    "epoch_metrics",
    "load_dataset",
    "part_class",
    "parts_of",
    "plan_population",
    "population_eval",
    "population_step",
]


def part_class(pid: PartId) -> type[Part]:
    return {"member": Member, "fused": Fusion, "trunk": Trunk}[pid.kind]


def build_part(spec: PartSpec, device: torch.device, dataset: Dataset | None) -> Part:
    """The part of ``spec`` (one of a plan's), wherever it is built (in one process, or in its own actor), with the
    plan's data set where the part reads batches itself; its modules in the spec's memory format, and compiled
    where the spec says."""
    part = part_class(spec.pid)(spec, device, dataset if spec.reads_data else None)
    to_format(part.modules.values(), spec.memory_format)
    compile_modules(part.modules.values(), spec.compile)
    return part

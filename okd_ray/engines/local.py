"""The local engine: the whole population in one process, the reference every other engine must match."""

from __future__ import annotations

from collections.abc import Callable

import torch

from okd_ray.config import TrainConfig
from okd_ray.metrics import Meter, test_accuracy
from okd_ray.population import Fusion, Member, PopulationPlan, population_eval, population_step


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class LocalEngine:
    def __init__(self, config: TrainConfig, plan: PopulationPlan):
        device = resolve_device(config.device)
        self.threads_before = torch.get_num_threads()
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.config, self.plan, self.spec = config, plan, config.method.spec
        self.members = [Member(config, k, plan, device) for k in range(len(config.members))]
        self.fusion = Fusion(config, plan, device) if self.spec.fusion else None
        self.names = [m.name for m in self.members]

    def begin_epoch(self, epoch: int) -> dict[str, dict[str, float]]:
        lrs = {m.name: m.begin_epoch(epoch) for m in self.members}
        if self.fusion is not None:
            lrs["fused"] = self.fusion.begin_epoch(epoch)
        return lrs

    def train_epoch(self, steps: int, on_step: Callable[[int], None]) -> dict[str, dict[str, float]]:
        meters = {name: Meter() for name in self.names + (["fused"] if self.fusion else [])}
        for _ in range(steps):
            member_metrics, fusion_metrics = population_step(self.members, self.fusion, self.spec)
            for name, values in zip(self.names, member_metrics):
                meters[name].add(values)
            if fusion_metrics is not None:
                meters["fused"].add(fusion_metrics)
            on_step(1)
        return {name: meter.result() for name, meter in meters.items()}

    def evaluate(self) -> dict[str, dict[str, float]]:
        return test_accuracy(population_eval(self.members, self.fusion, self.plan.num_test_batches), self.names)

    def state_dict(self) -> dict:
        return {
            "members": [m.state_dict() for m in self.members],
            "fusion": self.fusion.state_dict() if self.fusion else None,
        }

    def load_state_dict(self, state: dict) -> None:
        for m, s in zip(self.members, state["members"]):
            m.load_state_dict(s)
        if self.fusion is not None:
            self.fusion.load_state_dict(state["fusion"])

    def close(self) -> None:
        torch.set_num_threads(self.threads_before)

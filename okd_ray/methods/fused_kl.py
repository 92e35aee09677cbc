"""FFL's member term (Kim et al., 2019): distil from the fused classifier, T²·KL(fused ‖ own), ramped up; and the
fusion part it brings: the fusion module, trained on CE + w·T²·KL(ensemble ‖ fused), the ensemble the detached
mean of the members' logits, with the same weight, ramp-up and temperature.
"""

import torch
import torch.nn.functional as F
from pydantic import Field

from .fusion import FusionModule
from .kl import distill_kl
from .term import Batch, Fuser, FuserStep, FusionOptimizerConfig, Need, RampedSettings, Term


class FeatureFusion(Fuser):
    columns = ("ce", "ensemble_kl")
    classifies = True

    def __init__(self, settings, shapes, num_classes):
        super().__init__(settings, shapes, num_classes)
        self.module = FusionModule(shapes, num_classes)

    def modules(self):
        return {"module": self.module}

    def loss(self, maps, logits, labels, weight) -> FuserStep:
        fused = self.module(maps)
        ensemble = torch.stack(logits).mean(0)  # detached below: the ensemble teaches, it is not taught
        losses = {
            "ce": F.cross_entropy(fused, labels),
            "ensemble_kl": distill_kl(fused, ensemble, self.settings.temperature),
        }
        return FuserStep(losses, losses["ce"] + weight * losses["ensemble_kl"], [fused] * len(maps), fused)

    def eval(self, maps):
        return self.module(maps)


class FusedKL(Term):
    name = "fused_kl"
    needs = frozenset({Need.FUSION})
    fuser = FeatureFusion

    class Settings(RampedSettings):
        temperature: float = Field(3.0, gt=0)
        rampup_epochs: float = Field(80, ge=0)
        fusion_optimizer: FusionOptimizerConfig = FusionOptimizerConfig()

    def loss(self, batch: Batch) -> torch.Tensor:
        return distill_kl(batch.logits, batch.fused_logits, self.settings.temperature)

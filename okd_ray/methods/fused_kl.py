"""FFL's member term (Kim et al., 2019): distil from the fused classifier, T²·KL(fused ‖ own), ramped up.

The same settings drive the fusion part's own loss, CE + w·KL(ensemble ‖ fused): one weight, one ramp.
"""

import torch
from pydantic import Field

from okd_ray.optim import OptimizerConfig

from .kl import distill_kl
from .term import Batch, Need, RampedSettings, Term


class FusionOptimizerConfig(OptimizerConfig):
    lr: float | None = Field(None, gt=0)  # None: member 0's learning rate, as in the official code
    weight_decay: float = Field(1e-5, ge=0)  # the official fusion optimizer's


class FusedKL(Term):
    name = "fused_kl"
    needs = frozenset({Need.FUSION})

    class Settings(RampedSettings):
        temperature: float = Field(3.0, gt=0)
        rampup_epochs: float = Field(80, ge=0)
        fusion_optimizer: FusionOptimizerConfig = FusionOptimizerConfig()

    def loss(self, batch: Batch) -> torch.Tensor:
        return distill_kl(batch.logits, batch.fused_logits, self.settings.temperature)

"""FFL's fusion part: the fusion module and fused classifier, with its own optimizer. Plain PyTorch.

Its loss is CE(z_F) + w·T²·KL(ensemble ‖ z_F), the ensemble being the detached mean of the members'
logits, with the weight, ramp-up and temperature of the members' ``fused_kl`` term. The gradients on the
members' maps go back to them, so the fused loss trains them as one graph would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from okd_ray.methods import FusionModule, OwnedOptimizer, distill_kl
from okd_ray.optim import make_optimizer

from .outgoing import outgoing
from .part import Part
from .protocol import FusedMessage, FusionInput, FusionStep
from .spec import FusionSpec

COLUMNS = ("ce", "ensemble_kl")  # the fusion's loss terms, unweighted


class Fusion(Part):
    def __init__(self, spec: FusionSpec, device: str | torch.device = "cpu"):
        super().__init__(spec, ("fusion",), device)
        self.settings = spec.settings
        with self.rng.active(self.device):
            self.module = FusionModule(list(spec.shapes), spec.info.num_classes).to(self.device)
        self.modules = {"module": self.module}
        self.optimizers = {"fusion": OwnedOptimizer(make_optimizer(self.module.parameters(), spec.optimizer),
                                                    spec.optimizer)}

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        self.weight = self.settings.weight_at(epoch)
        return super().begin_epoch(epoch)

    def step(self, *inputs: FusionInput) -> FusionStep:
        """Train on the members' maps; send each member the fused logits and the gradient on its map."""
        maps = [i.feature.to(self.device).detach().requires_grad_() for i in inputs]
        ensemble = torch.stack([i.logits.to(self.device) for i in inputs]).mean(0)
        labels = inputs[0].labels.to(self.device)
        with self.rng.active(self.device):
            fused = self.module(maps)
            losses = dict(zip(COLUMNS, (F.cross_entropy(fused, labels), distill_kl(fused, ensemble, self.settings.temperature))))
            self.check_finite(losses, "method.terms.fused_kl.fusion_optimizer.lr", "method.terms.fused_kl.weight")
            optimizer = self.optimizers["fusion"].optimizer
            optimizer.zero_grad(set_to_none=True)
            (losses["ce"] + self.weight * losses["ensemble_kl"]).backward()
            optimizer.step()
        self.step_index += 1
        metrics = dict(zip(losses, torch.stack([v.detach() for v in losses.values()]).tolist()))
        metrics.update(train_correct=int((fused.detach().argmax(1) == labels).sum()), n=len(labels))
        return FusionStep(metrics, outgoing(tuple(FusedMessage(fused, f.grad) for f in maps)))

    @torch.no_grad()
    def eval(self, *features: torch.Tensor) -> torch.Tensor:
        return outgoing(self.module([f.to(self.device) for f in features]))

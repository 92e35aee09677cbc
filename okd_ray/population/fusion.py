"""The fusion part: the modules and loss of the term that brings it (``Term.fuser``: FFL's fusion module, OKDDip's
attention), with its own optimizer. Plain PyTorch.

Every member sends it its last feature map and its logits; it takes them as leaves, steps on its term's loss, and
sends each member what that member's terms read (``batch.fused_logits``) with the gradients the loss left on its
map and logits, so the members learn as one graph over all of them would.
"""

from __future__ import annotations

import torch

from okd_ray.data.base import Dataset
from okd_ray.methods import OwnedOptimizer
from okd_ray.optim import make_optimizer

from .outgoing import outgoing
from .part import Part
from .protocol import FusedMessage, FusionInput, FusionStep
from .spec import FusionSpec


def leaf(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device).detach().requires_grad_()


class Fusion(Part):
    def __init__(self, spec: FusionSpec, device: str | torch.device = "cpu", dataset: Dataset | None = None):
        super().__init__(spec, ("fusion",), device)  # it reads no data: the members send it theirs
        self.settings, self.term = spec.settings, spec.term
        with self.rng.active(self.device):
            self.fuser = spec.fuser(spec.settings, list(spec.shapes), spec.info.num_classes)
            self.modules = {k: m.to(self.device) for k, m in self.fuser.modules().items()}
        params = [p for m in self.modules.values() for p in m.parameters()]
        self.optimizers = {"fusion": OwnedOptimizer(make_optimizer(params, spec.optimizer), spec.optimizer)}

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        self.weight = self.settings.weight_at(epoch)
        return super().begin_epoch(epoch)

    def step(self, *inputs: FusionInput) -> FusionStep:
        """Train on the members' maps and logits; send each member its fused logits and its gradients."""
        maps = [leaf(i.feature, self.device) for i in inputs]
        logits = [leaf(i.logits, self.device) for i in inputs]
        labels = inputs[0].labels.to(self.device)
        with self.rng.active(self.device):
            with self.precision.autocast():
                out = self.fuser.loss(maps, logits, labels, self.weight)
            self.log(out.losses, f"method.terms.{self.term}.fusion_optimizer.lr", f"method.terms.{self.term}.weight")
            optimizer = self.optimizers["fusion"].optimizer
            optimizer.zero_grad(set_to_none=True)
            self.stepper.backward(out.total)
            self.stepper.step(optimizer)
        if out.fused is not None:
            self.log({"train_correct": out.fused.detach().argmax(1) == labels})
        unscaled = self.precision.unscaled  # before end_step: fp16's next scale is not the one this backward used
        to_members = outgoing(
            tuple(FusedMessage(z, unscaled(f.grad), unscaled(g.grad)) for z, f, g in zip(out.to_members, maps, logits))
        )
        self.end_step(len(labels))
        done, self.step_index = self.step_index, self.step_index + 1
        return FusionStep(done, to_members)

    @torch.no_grad()
    def eval(self, *features: torch.Tensor) -> torch.Tensor | None:
        with self.precision.autocast():
            return outgoing(self.fuser.eval([f.to(self.device) for f in features]))

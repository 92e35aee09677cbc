"""The shared trunk: the stem and first stages that members of one architecture share. Plain PyTorch.

It computes the shared features once per batch and sends them to every member; each member sends back
the gradient of its loss on them, and the trunk steps on their sum, as one graph's backward would. For
ONE it also holds the gate over the members, trained the same way.
"""

from __future__ import annotations

import torch

from okd_ray.data.base import Split
from okd_ray.methods import Gate, OwnedOptimizer
from okd_ray.models import build_model
from okd_ray.optim import make_optimizer

from .outgoing import outgoing
from .part import Part
from .plan import load_dataset
from .protocol import SharedMessage, TrunkEval, TrunkForward, TrunkGrad
from .spec import TrunkSpec


class Trunk(Part):
    def __init__(self, spec: TrunkSpec, device: str | torch.device = "cpu"):
        super().__init__(spec, ("trunk",), device)
        with self.rng.active(self.device):
            net = build_model(spec.arch, in_channels=spec.info.in_channels, num_classes=spec.info.num_classes)
            self.net = net.split(spec.trunk_stages)[0].to(self.device)
            self.gate = Gate(spec.shape[0], spec.members).to(self.device) if spec.gate else None
        self.modules = {"net": self.net, **({"gate": self.gate} if self.gate is not None else {})}
        params = [p for m in self.modules.values() for p in m.parameters()]
        # The trunk learns with member 0's optimizer settings (all members share one architecture).
        self.optimizers = {"trunk": OwnedOptimizer(make_optimizer(params, spec.optimizer), spec.optimizer)}
        self.dataset = load_dataset(spec.data, spec.seed)
        self._batches = self._eval_batches = None

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        lrs = super().begin_epoch(epoch)
        self._batches = iter(self.dataset.train_batches(epoch))
        return lrs

    def forward(self) -> TrunkForward:
        x, y, ids = next(self._batches)
        with self.rng.active(self.device):
            self._features = self.net(x.to(self.device, non_blocking=True))
            self._gate = self.gate(self._features) if self.gate is not None else None
        return TrunkForward(outgoing(SharedMessage(self._features, self._gate, y, ids)))

    def update(self, *grads: TrunkGrad) -> dict[str, float]:
        """Step on the sum of the members' gradients (in member order, the same in every engine)."""
        optimizer = self.optimizers["trunk"].optimizer
        optimizer.zero_grad(set_to_none=True)
        outputs, sums = [self._features], [sum(g.features.to(self.device) for g in grads)]
        if self._gate is not None:
            outputs.append(self._gate)
            sums.append(sum(g.gate.to(self.device) for g in grads))
        with self.rng.active(self.device):
            torch.autograd.backward(outputs, sums)
            optimizer.step()
        self.step_index += 1
        self._features = self._gate = None
        return {}

    def begin_eval(self, split: Split) -> None:
        super().begin_eval(split)
        self._eval_batches = iter(self.dataset.eval_batches(split))

    @torch.no_grad()
    def eval_next(self) -> TrunkEval:
        x, y = next(self._eval_batches)
        with self.rng.active(self.device):
            features = self.net(x.to(self.device))
            gate = self.gate(features) if self.gate is not None else None
        return outgoing(TrunkEval(SharedMessage(features, gate, y), gate))

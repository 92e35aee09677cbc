"""The shared trunk: the stem and first stages that members of one architecture share. Plain PyTorch.

It computes the shared features once per batch and sends them to every member; each member sends back
the gradient of its loss on them, and the trunk steps on their sum, as one graph's backward would. For
ONE it also holds the gate over the members, trained the same way.
"""

from __future__ import annotations

import torch

from okd_ray.config import TrainConfig
from okd_ray.data.base import Split
from okd_ray.methods import Gate, Need, OwnedOptimizer
from okd_ray.models import build_model
from okd_ray.optim import make_optimizer

from .outgoing import outgoing
from .part import Part
from .plan import PopulationPlan, load_dataset
from .protocol import SharedMessage, TrunkEval, TrunkForward, TrunkGrad


class Trunk(Part):
    def __init__(self, config: TrainConfig, plan: PopulationPlan, device: str | torch.device = "cpu"):
        super().__init__(config, "trunk", ("trunk",), device)
        arch = config.members[0]
        with self.rng.active(self.device):
            net = build_model(arch.arch, in_channels=plan.data.in_channels, num_classes=plan.data.num_classes)
            self.net = net.split(config.trunk_stages)[0].to(self.device)
            self.gate = (Gate(plan.trunk_shape[0], len(config.members)).to(self.device)
                         if Need.GATE in config.method.method.needs else None)
        self.modules = {"net": self.net, **({"gate": self.gate} if self.gate is not None else {})}
        params = [p for m in self.modules.values() for p in m.parameters()]
        # The trunk learns with member 0's optimizer settings (all members share one architecture).
        self.optimizers = {"trunk": OwnedOptimizer(make_optimizer(params, arch.optimizer), arch.optimizer)}
        self.dataset = load_dataset(config.data, config.seed)
        self._batches = self._eval_batches = None

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        lrs = super().begin_epoch(epoch)
        self._batches = iter(self.dataset.train_batches(epoch))
        return lrs

    def forward(self) -> TrunkForward:
        x, y = next(self._batches)
        with self.rng.active(self.device):
            self._features = self.net(x.to(self.device, non_blocking=True))
            self._gate = self.gate(self._features) if self.gate is not None else None
        return TrunkForward(outgoing(SharedMessage(self._features, self._gate, y)))

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

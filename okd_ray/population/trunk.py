"""The shared trunk: the stem and first stages that members of one architecture share. Plain PyTorch.

It computes the shared features once per batch and sends them to every member; each member sends back
the gradient of its loss on them, and the trunk steps on their sum, as one graph's backward would. With
``data.augment_per_member`` it runs each member's own augmentation of the batch (PCL's peers), and each member
gets the features of its own. For ONE it also holds the gate over the members, trained the same way; the
terms' trunk hooks (PCL's temporal mean) live here too.
"""

from __future__ import annotations

import torch

from okd_ray.data.base import Dataset, Split
from okd_ray.methods import Gate, OwnedOptimizer
from okd_ray.models import build_model
from okd_ray.optim import make_optimizer

from .outgoing import outgoing
from .part import Part
from .protocol import SharedMessage, TrunkEval, TrunkForward, TrunkGrad
from .replicas import shard
from .spec import TrunkSpec


class Trunk(Part):
    def __init__(self, spec: TrunkSpec, device: str | torch.device = "cpu", dataset: Dataset | None = None):
        super().__init__(spec, ("trunk",), device, dataset)
        with self.rng.active(self.device):
            net = build_model(spec.arch, in_channels=spec.info.in_channels, num_classes=spec.info.num_classes)
            self.net = net.split(spec.trunk_stages)[0].to(self.device)
            self.gate = Gate(spec.shape[0], spec.members).to(self.device) if spec.gate else None
            self.hooks = {name: hook(settings, self.net, spec.steps_per_epoch) for name, hook, settings in spec.hooks}
        self.modules = {"net": self.net, **({"gate": self.gate} if self.gate is not None else {})}
        params = [p for m in self.modules.values() for p in m.parameters()]
        for hook in self.hooks.values():
            self.modules.update(hook.modules())
        # What every evaluation runs: the trunk's network, or the one a hook deploys instead (PCL's mean).
        self.deployed = next((h.deployed() for h in self.hooks.values() if h.deployed() is not None), self.net)
        # The trunk learns with member 0's optimizer settings (all members share one architecture).
        self.optimizers = {"trunk": OwnedOptimizer(make_optimizer(params, spec.optimizer), spec.optimizer)}
        self._streams = self._eval_batches = None

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        lrs = super().begin_epoch(epoch)
        streams = range(self.spec.streams) if self.spec.streams > 1 else [None]
        self._streams = [iter(self.dataset.train_batches(epoch, stream)) for stream in streams]
        return lrs

    def forward(self) -> TrunkForward:
        """Each stream's batch through the shared stages; member k gets stream k's (or the one stream's)."""
        batches = [shard(next(stream), self.spec.replica, self.spec.replicas) for stream in self._streams]
        self._features, self._gates, sent = [], [], []
        with self.rng.active(self.device), self.precision.autocast():
            for x, y, ids in batches:
                x = self.images(x)
                features = self.net(x)
                gate = self.gate(features) if self.gate is not None else None
                messages = {name: hook.to_members(x) for name, hook in self.hooks.items()}
                self._features.append(features)
                self._gates.append(gate)
                sent.append(
                    SharedMessage(features, gate, y, ids, {k: v for k, v in messages.items() if v is not None} or None)
                )
        return TrunkForward(outgoing(tuple(sent[k % len(sent)] for k in range(self.spec.members))))

    def update(self, *grads: TrunkGrad) -> int:
        """Step on each stream's sum of its members' gradients (in member order, the same in every engine)."""
        optimizer = self.optimizers["trunk"].optimizer
        optimizer.zero_grad(set_to_none=True)
        outputs, sums = [], []
        for stream, (features, gate) in enumerate(zip(self._features, self._gates)):
            fed = [g for k, g in enumerate(grads) if k % len(self._features) == stream]
            outputs.append(features)
            sums.append(sum(g.features.to(self.device) for g in fed))
            if gate is not None:
                outputs.append(gate)
                sums.append(sum(g.gate.to(self.device) for g in fed))
        with self.rng.active(self.device):  # fp16: the members' gradients (unscaled) times the trunk's scale
            torch.autograd.backward(outputs, [self.precision.scale(s).to(o.dtype) for o, s in zip(outputs, sums)])
            self.stepper.step(optimizer)
            for hook in self.hooks.values():
                hook.after_update(self.epoch, self.step_index)
        self.end_step(None)  # no metrics of its own
        done, self.step_index = self.step_index, self.step_index + 1
        self._features = self._gates = None
        return done

    def begin_eval(self, split: Split) -> None:
        super().begin_eval(split)
        self._eval_batches = iter(self.dataset.eval_batches(split))

    @torch.no_grad()
    def eval_next(self) -> TrunkEval:
        x, y = next(self._eval_batches)
        with self.rng.active(self.device), self.precision.autocast():
            features = self.deployed(self.images(x))
            gate = self.gate(features) if self.gate is not None else None
        return outgoing(TrunkEval(SharedMessage(features, gate, y), gate))

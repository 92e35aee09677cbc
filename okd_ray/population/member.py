"""A population member: network, transfer layer, discriminator and optimizers. Plain PyTorch, no Ray.

Both engines hold these objects and call the same methods in the same order: ``begin_epoch``, then per
batch ``forward`` and ``update``; ``begin_eval``/``eval_next`` to test. Tensors it returns are detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from okd_ray.config import TrainConfig
from okd_ray.errors import TrainingDiverged
from okd_ray.methods import (
    Discriminator,
    alignment_loss,
    discriminator_loss,
    distill_kl,
    generator_loss,
    sigmoid_rampup,
    transfer_layer,
)
from okd_ray.models import build_model

from .outgoing import outgoing
from .optim import lr_factor, make_optimizer, set_lr
from .plan import PopulationPlan, load_dataset
from okd_ray.seeding import derive_seed

from .rng import PrivateRNG


FEATURE_TERMS = ("adv_g", "align")  # terms that take the feature-map update path


class Member:
    def __init__(self, config: TrainConfig, index: int, plan: PopulationPlan, device: str | torch.device = "cpu"):
        self.config, self.index, self.plan = config, index, plan
        self.device = torch.device(device)
        self.spec = config.method.spec
        self.name = f"m{index}:{config.members[index].arch}"
        self.rng = PrivateRNG(derive_seed(config.seed, "member", index))
        afd = config.method.afd
        with self.rng.active(self.device):
            self.net = build_model(
                config.members[index].arch, in_channels=plan.data.in_channels, num_classes=plan.data.num_classes
            ).to(self.device)
            self.transfer = (
                transfer_layer(plan.shapes[index], plan.common).to(self.device) if plan.common else None
            )
            self.disc = (
                Discriminator(plan.common[0], plan.common[1]).to(self.device)
                if self.spec.feature == "adversarial" else None
            )
        transfer_params = list(self.transfer.parameters()) if self.transfer else []
        self.alternating = self.spec.feature != "none" and afd.update == "alternating"
        logit_params = list(self.net.parameters()) + ([] if self.alternating else transfer_params)
        self.optimizers = {"logit": make_optimizer(logit_params, config.members[index].optimizer)}
        if self.alternating:
            self.optimizers["feature"] = make_optimizer(self.net_and_transfer_params(), afd.feature_optimizer)
        if self.disc is not None:
            self.optimizers["disc"] = make_optimizer(self.disc.parameters(), afd.disc_optimizer)
        self.base_lrs = {
            "logit": config.members[index].optimizer.lr,
            "feature": afd.feature_optimizer.lr,
            "disc": afd.disc_optimizer.lr,
        }
        self.dataset = load_dataset(config.data, config.seed)
        self.epoch, self.step = 0, 0
        self._batches = self._test_batches = None

    def net_and_transfer_params(self) -> list[torch.nn.Parameter]:
        return list(self.net.parameters()) + (list(self.transfer.parameters()) if self.transfer else [])

    def modules(self) -> dict[str, torch.nn.Module]:
        parts = {"net": self.net, "transfer": self.transfer, "disc": self.disc}
        return {k: v for k, v in parts.items() if v is not None}

    # --- training -------------------------------------------------------------------------------------

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        """Set this epoch's learning rates and KL ramp, and start the epoch's seeded batch order."""
        self.epoch, self.step = epoch, 0
        schedule, epochs = self.config.schedule, self.config.epochs
        lrs = {}
        for key, opt in self.optimizers.items():
            # The adversarial optimizers decay at half the logit milestones (the public re-implementation).
            scale = 1.0 if key == "logit" else 0.5
            lrs[f"lr_{key}"] = set_lr(opt, self.base_lrs[key], lr_factor(schedule, epoch, epochs, scale))
        ffl = self.config.method.ffl
        self.ffl_weight = ffl.kl_weight * sigmoid_rampup(epoch, ffl.rampup_epochs)
        for module in self.modules().values():
            module.train()
        self._batches = iter(self.dataset.train_batches(epoch))
        return lrs

    def forward(self):
        """Run the next batch. Returns (labels, feature map for the fusion, public map for the ring, logits)."""
        x, y = next(self._batches)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with self.rng.active(self.device):
            feature, logits = self.net(x)
            public = self.transfer(feature) if self.transfer is not None else None
        self._check_finite({"logits": logits})  # name the member that diverged, not the peers it feeds
        self._labels, self._feature, self._public, self._logits = y, feature, public, logits
        return outgoing((y, feature if self.spec.fusion else None, public, logits))

    def update(self, peer_map, fused_logits, feature_grad, *peer_logits) -> dict[str, float]:
        """One optimisation step from the last ``forward``, given what the ring and the fusion sent back.

        Returns each loss term unweighted, with the batch's correct count and size.
        """
        method, z, y = self.config.method, self._logits, self._labels
        peer_map, fused_logits, feature_grad = (
            t.to(self.device) if t is not None else None for t in (peer_map, fused_logits, feature_grad)
        )
        with self.rng.active(self.device):
            terms, weights = {"ce": F.cross_entropy(z, y)}, {"ce": 1.0}
            if peer_logits:
                terms["kl_peer"] = torch.stack(
                    [distill_kl(z, p.to(self.device), method.peer_temperature) for p in peer_logits]
                ).mean()
                weights["kl_peer"] = method.kl_weight
            if fused_logits is not None:
                terms["kl_fused"], weights["kl_fused"] = distill_kl(z, fused_logits, method.ffl.temperature), self.ffl_weight
            if self.spec.feature == "adversarial":
                terms["adv_g"], weights["adv_g"] = generator_loss(self.disc(self._public)), method.afd.adv_weight
            elif self.spec.feature in ("l1", "l2"):
                terms["align"] = alignment_loss(self._public, peer_map, self.spec.feature)
                weights["align"] = method.align_weight
            self._check_finite(terms)
            logit_loss = sum(weights[n] * t for n, t in terms.items() if n not in FEATURE_TERMS)
            feature_loss = sum(weights[n] * t for n, t in terms.items() if n in FEATURE_TERMS)
            self._step_network(logit_loss, feature_loss, feature_grad)
            if self.disc is not None:
                terms["disc"] = self._step_discriminator(peer_map)
        values = dict(zip(terms, torch.stack([v.detach().float() for v in terms.values()]).tolist()))
        values["train_correct"] = int((z.detach().argmax(1) == y).sum())
        values["n"] = len(y)
        self.step += 1
        self._feature = self._public = self._logits = self._labels = None
        return values

    def _step_network(self, logit_loss, feature_loss, feature_grad) -> None:
        """Apply the logit loss, the fusion's gradient on the feature map, and the feature-map term."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        outputs, grads = [logit_loss], [None]
        if feature_grad is not None:  # the fused loss's gradient, computed where the fusion lives
            outputs.append(self._feature)
            grads.append(feature_grad.to(self.device))
        if not self.alternating:
            outputs[0] = logit_loss + feature_loss
            torch.autograd.backward(outputs, grads)
            self.optimizers["logit"].step()
            return
        # Separate updates from one forward: both gradients are taken before either step changes a weight.
        params = self.net_and_transfer_params()
        feature_grads = torch.autograd.grad(feature_loss, params, retain_graph=True, allow_unused=True)
        torch.autograd.backward(outputs, grads)
        self.optimizers["logit"].step()
        for p, g in zip(params, feature_grads):
            p.grad = g
        self.optimizers["feature"].step()

    def _step_discriminator(self, peer_map: torch.Tensor) -> torch.Tensor:
        """D_k learns: the predecessor's map is real, this member's own map is fake."""
        loss = discriminator_loss(self.disc(peer_map.to(self.device)), self.disc(self._public.detach()))
        self._check_finite({"disc": loss})
        opt = self.optimizers["disc"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        values = torch.stack([t.detach().float().sum() for t in terms.values()])
        if bool(torch.isfinite(values).all()):
            return
        name, value = next((n, float(v)) for n, v in zip(terms, values) if not torch.isfinite(v))
        raise TrainingDiverged(
            f"member {self.name}: {name!r} is {value} at epoch {self.epoch}, step {self.step}; "
            f"lower its learning rate or the weight of {name!r}"
        )

    # --- evaluation -----------------------------------------------------------------------------------

    def begin_eval(self) -> None:
        for module in self.modules().values():
            module.eval()
        self._test_batches = iter(self.dataset.test_batches())

    @torch.no_grad()
    def eval_next(self):
        """The next test batch: (labels, feature map for the fusion, logits)."""
        x, y = next(self._test_batches)
        with self.rng.active(self.device):
            feature, logits = self.net(x.to(self.device))
        return outgoing((y, feature if self.spec.fusion else None, logits))

    # --- checkpoints ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "rng": self.rng.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        self.rng.load_state_dict(state["rng"])

"""FFL's fusion part: fusion module, fused classifier and its own optimizer. Plain PyTorch, no Ray."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from okd_ray.config import TrainConfig
from okd_ray.errors import TrainingDiverged
from okd_ray.methods import FusionModule, distill_kl, sigmoid_rampup

from .outgoing import outgoing
from .optim import lr_factor, make_optimizer, set_lr
from .plan import PopulationPlan
from okd_ray.seeding import derive_seed

from .rng import PrivateRNG


class Fusion:
    def __init__(self, config: TrainConfig, plan: PopulationPlan, device: str | torch.device = "cpu"):
        self.config, self.device = config, torch.device(device)
        self.num_members = len(plan.shapes)
        self.rng = PrivateRNG(derive_seed(config.seed, "fusion"))
        with self.rng.active(self.device):
            self.module = FusionModule(plan.shapes, plan.data.num_classes).to(self.device)
        self.optimizer = make_optimizer(self.module.parameters(), config.method.ffl.optimizer)
        self.epoch, self.step_index = 0, 0

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        ffl = self.config.method.ffl
        self.epoch, self.step_index = epoch, 0
        self.kl_weight = ffl.kl_weight * sigmoid_rampup(epoch, ffl.rampup_epochs)
        self.module.train()
        factor = lr_factor(self.config.schedule, epoch, self.config.epochs)
        return {"lr_fusion": set_lr(self.optimizer, ffl.optimizer.lr, factor)}

    def step(self, labels: torch.Tensor, *maps_and_logits: torch.Tensor):
        """Train on the members' feature maps; return (metrics, fused logits, ∂loss/∂f_k for each member).

        Loss: CE(z_F) + w·KL(ensemble → z_F), the ensemble being the detached mean of the members' logits.
        The gradients on the maps go back to the members, so the fused loss trains them as in one process.
        """
        k = self.num_members
        maps = [f.to(self.device).detach().requires_grad_() for f in maps_and_logits[:k]]
        ensemble = torch.stack([z.to(self.device) for z in maps_and_logits[k:]]).mean(0)
        labels = labels.to(self.device)
        with self.rng.active(self.device):
            fused = self.module(maps)
            ce = F.cross_entropy(fused, labels)
            kl = distill_kl(fused, ensemble, self.config.method.ffl.temperature)
        values = torch.stack([ce.detach(), kl.detach()])
        if not bool(torch.isfinite(values).all()):
            name = "fused_ce" if not torch.isfinite(values[0]) else "fused_kl"
            raise TrainingDiverged(
                f"fusion: loss term {name!r} is not finite at epoch {self.epoch}, step {self.step_index}; "
                "lower method.ffl.optimizer.lr or method.ffl.kl_weight"
            )
        self.optimizer.zero_grad(set_to_none=True)
        (ce + self.kl_weight * kl).backward()
        self.optimizer.step()
        self.step_index += 1
        fused_ce, fused_kl = values.tolist()
        metrics = {
            "fused_ce": fused_ce, "fused_kl": fused_kl,
            "train_correct": int((fused.detach().argmax(1) == labels).sum()), "n": len(labels),
        }
        return outgoing((metrics, fused, *[f.grad for f in maps]))

    @torch.no_grad()
    def eval(self, *maps: torch.Tensor) -> torch.Tensor:
        self.module.eval()
        return outgoing(self.module([f.to(self.device) for f in maps]))

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": self.rng.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.load_state_dict(state["rng"])

"""AFD's least-squares GAN on feature maps (Chung et al., ICML 2020).

D_k learns to call the ring predecessor's map real (target 1) and network k's own map fake (target 0);
network k learns to make D_k call its own map real, and so takes on the peer's feature distribution.
"""

from typing import Literal

import torch
from torch import nn

from okd_ray.optim import OptimizerConfig, make_optimizer

from .term import Batch, MemberInfo, Need, OwnedOptimizer, Term, TermSettings


class Discriminator(nn.Module):
    """A small convolutional critic over (C, H, W) feature maps; one output per sample: an unbounded score
    (LSGAN's usual form) or, with ``bounded``, a sigmoid in [0, 1] (as a screenshot of the paper's Figure 1 shows).

    The paper's exact discriminator is not published: two 3×3 convs with LeakyReLU, global pooling and
    a linear score is our choice. No BatchNorm, so real and fake batches never share statistics.
    """

    def __init__(self, channels: int, height: int, bounded: bool = False):
        super().__init__()
        width = max(channels // 2, 16)
        stride = 2 if height >= 4 else 1
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, stride=stride, padding=1),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, 1),
            *([nn.Sigmoid()] if bounded else []),  # no parameters: the same weights and state dict either way
        )

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.body(feature_map).squeeze(1)


def discriminator_loss(score_peer: torch.Tensor, score_own: torch.Tensor) -> torch.Tensor:
    """L_D = (1 − D(peer))² + D(own)²: the peer's map is real, the network's own map is fake."""
    return ((1 - score_peer) ** 2).mean() + (score_own**2).mean()


def generator_loss(score_own: torch.Tensor) -> torch.Tensor:
    """L_G = (1 − D(own))²: the network wants its own map judged real, i.e. like the peer's."""
    return ((1 - score_own) ** 2).mean()


class Adversarial(Term):
    """The generator term; the term owns D_k, its optimizer and its step after the member's update."""

    name = "adversarial"
    update = "feature"
    needs = frozenset({Need.RING_MAP})
    extra_columns = ("discriminator",)

    class Settings(TermSettings):
        # The one public re-implementation's values (Adam 2e-5, milestones at half the logit ones).
        discriminator_optimizer: OptimizerConfig = OptimizerConfig(
            name="adam", lr=2e-5, weight_decay=0.0, milestone_scale=0.5
        )
        output: Literal["score", "sigmoid"] = "score"  # D's output: an unbounded score, or in [0, 1]

    def __init__(self, settings: Settings, member: MemberInfo):
        super().__init__(settings, member)
        channels, height, _ = member.public_shape
        self.disc = Discriminator(channels, height, bounded=settings.output == "sigmoid").to(member.device)
        self.optimizer = make_optimizer(self.disc.parameters(), settings.discriminator_optimizer)
        self.stepper = member.stepper

    def loss(self, batch: Batch) -> torch.Tensor:
        return generator_loss(self.disc(batch.public))

    def modules(self) -> dict[str, nn.Module]:
        return {"discriminator": self.disc}

    def optimizers(self) -> dict[str, OwnedOptimizer]:
        return {"discriminator": OwnedOptimizer(self.optimizer, self.settings.discriminator_optimizer)}

    def after_update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """D_k steps on the predecessor's map (real) and this member's map from the same forward (fake)."""
        loss = discriminator_loss(self.disc(batch.ring_map), self.disc(batch.public.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        self.stepper.backward(loss)
        self.stepper.step(self.optimizer)
        return {"discriminator": loss.detach()}

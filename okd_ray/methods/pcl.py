"""PCL, Peer Collaborative Learning (Wu & Gong, AAAI 2021). No official code was released; the formulas follow the
public re-implementation shaoeric/Peer-Collaborative-Learning-for-Online-Knowledge-Distillation
(``src/losses/loss_wrapper.py``, ``kd_loss.py``, ``models/resnet.py``, ``utils/ema.py``).

- **The peer ensemble teacher**: a linear classifier over the concatenation of every peer's pooled last map,
  trained on its cross-entropy, which reaches every peer (the fusion part). Each peer distils from its detached
  logits.
- **The peer mean teachers**: every peer keeps a temporal mean of its network (EMA of the parameters, decay
  min(1 − 1/(s+1), 0.999) at the run's step s, so it starts as the network itself); each peer distils from the
  mean of the KLs to the other peers' mean teachers, run on the same images.
- **Deployed**: the temporal-mean network; every evaluation runs it.

    L = CE(ensemble) + Σ_k [CE(z_k) + w(e)·T²·KL(ensemble ‖ z_k) + w(e)·(1/(K−1))·Σ_{j≠k} T²·KL(mean_j ‖ z_k)],

with T = 3. w(e) is the usual ramp-up exp(−5(1 − e/80)²) (the re-implementation's divides by 1 instead of 80,
which looks like a slip). PCL's peers share their low-level layers, each with its own augmentation; here the
peers are independent networks (``data.augment_per_member`` gives each its own augmentation), since okd-ray's
trunk feeds every branch one batch.
"""

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from okd_ray.errors import ConfigError

from .fused_kl import FusedKL
from .kl import distill_kl
from .term import Batch, Fuser, FuserStep, FusionOptimizerConfig, Need, RampedSettings, Term


class PeerEnsemble(Fuser):
    """The peer ensemble teacher: a linear classifier on the peers' concatenated pooled maps (``en_fc``)."""

    columns = ("ce",)
    classifies = True

    def __init__(self, settings, shapes, num_classes):
        super().__init__(settings, shapes, num_classes)
        self.classifier = nn.Linear(sum(s[0] for s in shapes), num_classes)

    def modules(self):
        return {"classifier": self.classifier}

    def logits(self, maps):
        return self.classifier(torch.cat([m.mean((2, 3)) for m in maps], 1))

    def loss(self, maps, logits, labels, weight) -> FuserStep:
        ensemble = self.logits(maps)
        losses = {"ce": F.cross_entropy(ensemble, labels)}
        return FuserStep(losses, losses["ce"], [ensemble] * len(maps), ensemble)

    def eval(self, maps):
        return self.logits(maps)


class PeerEnsembleKL(FusedKL):
    """T²·KL(peer ensemble ‖ own), the ensemble detached: FFL's member term, with the peer ensemble's part."""

    name = "peer_ensemble_kl"
    fuser = PeerEnsemble

    class Settings(FusedKL.Settings):
        # The re-implementation trains the ensemble classifier with the networks' SGD (wd 5e-4, Nesterov).
        fusion_optimizer: FusionOptimizerConfig = FusionOptimizerConfig(weight_decay=5e-4)

    @classmethod
    def check(cls, config) -> None:
        if config.trunk_stages:
            raise ConfigError("trunk_stages: pcl runs on independent peers here (its peers share low-level layers, "
                              "each with its own augmentation, which okd-ray's trunk cannot feed yet); set "
                              "trunk_stages=0, and data.augment=true data.augment_per_member=true for PCL's "
                              "augmentations")


def ema_decay(step: int, decay: float) -> float:
    """The true average until the exponential one is the better estimate (Tarvainen & Valpola's mean teacher)."""
    return min(1 - 1 / (step + 1), decay)


class PeerMeanKL(Term):
    """The member's temporal mean: kept after every update, run on the member's images, sent to its peers; each
    member distils from the others' (the mean of the KLs)."""

    name = "peer_mean_kl"
    needs = frozenset({Need.PEER_MESSAGES})

    class Settings(RampedSettings):
        temperature: float = Field(3.0, gt=0)
        rampup_epochs: float = Field(80, ge=0)
        decay: float = Field(0.999, ge=0, lt=1)

    def __init__(self, settings, member):
        super().__init__(settings, member)
        self.network, self.steps_per_epoch = member.network, member.steps_per_epoch
        self.mean = copy.deepcopy(member.network).requires_grad_(False)

    def modules(self):
        return {"mean_network": self.mean}

    def deployed(self):
        return self.mean

    def to_peers(self, batch: Batch):
        with torch.no_grad():
            return self.mean(batch.input)[1]

    def loss(self, batch: Batch) -> torch.Tensor:
        teachers = [sent[self.name] for sent in batch.peer_messages.values()]
        return sum(distill_kl(batch.logits, t, self.settings.temperature) for t in teachers) / len(teachers)

    def after_update(self, batch: Batch) -> dict[str, torch.Tensor]:
        alpha = ema_decay(batch.epoch * self.steps_per_epoch + batch.step, self.settings.decay)
        with torch.no_grad():
            for mean, live in zip(self.mean.parameters(), self.network.parameters()):
                mean.mul_(alpha).add_(live, alpha=1 - alpha)
        return {}

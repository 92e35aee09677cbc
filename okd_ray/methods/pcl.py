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
which looks like a slip). PCL's peers share their low-level layers (``trunk_stages``), each peer with its own
augmentation of the batch (``data.augment_per_member``): the trunk runs every peer's images, and keeps the
temporal mean of the shared stages (a trunk hook), which runs the peer mean teachers' share of the work and is
deployed with them. Independent peers (no trunk) work too.
"""

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .fused_kl import FusedKL
from .kl import distill_kl
from .term import Batch, Fuser, FuserStep, FusionOptimizerConfig, Need, RampedSettings, Term, TrunkHook


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


def ema_decay(step: int, decay: float) -> float:
    """The true average until the exponential one is the better estimate (Tarvainen & Valpola's mean teacher)."""
    return min(1 - 1 / (step + 1), decay)


@torch.no_grad()
def follow(mean: nn.Module, live: nn.Module, step: int, decay: float) -> None:
    """One temporal-mean update of ``mean``'s parameters towards ``live``'s at the run's ``step`` (its buffers, the
    batch-norm statistics, are its own: it runs in train mode on the same images, as in the re-implementation)."""
    alpha = ema_decay(step, decay)
    for m, p in zip(mean.parameters(), live.parameters()):
        m.mul_(alpha).add_(p, alpha=1 - alpha)


class TrunkMean(TrunkHook):
    """On a shared trunk: the temporal mean of the shared stages. It runs every peer's images, so that a peer mean
    teacher is the mean trunk and the mean branch, as the re-implementation's mean model is; it is deployed."""

    def __init__(self, settings, trunk, steps_per_epoch):
        super().__init__(settings, trunk, steps_per_epoch)
        self.trunk, self.steps_per_epoch = trunk, steps_per_epoch
        self.mean = copy.deepcopy(trunk).requires_grad_(False)

    def modules(self):
        return {"mean_trunk": self.mean}

    def to_members(self, images):
        with torch.no_grad():
            return self.mean(images)

    def after_update(self, epoch, step):
        follow(self.mean, self.trunk, epoch * self.steps_per_epoch + step, self.settings.decay)

    def deployed(self):
        return self.mean


class PeerMeanKL(Term):
    """The member's temporal mean: kept after every update, run on the member's images, sent to its peers; each
    member distils from the others' (the mean of the KLs)."""

    name = "peer_mean_kl"
    needs = frozenset({Need.PEER_MESSAGES})
    trunk_hook = TrunkMean

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
        """The mean network on the member's images: on a trunk, on the mean trunk's features of them."""
        with torch.no_grad():
            return self.mean(batch.trunk_messages.get(self.name, batch.input))[1]

    def loss(self, batch: Batch) -> torch.Tensor:
        teachers = [sent[self.name] for sent in batch.peer_messages.values()]
        return sum(distill_kl(batch.logits, t, self.settings.temperature) for t in teachers) / len(teachers)

    def after_update(self, batch: Batch) -> dict[str, torch.Tensor]:
        follow(self.mean, self.network, batch.epoch * self.steps_per_epoch + batch.step, self.settings.decay)
        return {}

"""What a loss term is: its name, its update, what it needs from the exchange, its settings and its loss.

A term is built once per member (``Term(settings, member)``) and asked for its loss at every step. It may
own modules and optimizers (AFD's discriminator) and act after the member's update (the D step). What
the population exchanges is the union of its terms' needs; metrics columns are its terms' ``columns``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import Field
from torch import nn

from okd_ray.optim import OptimizerConfig, Stepper
from okd_ray.precision import Precision
from okd_ray.settings import Strict

from .rampup import sigmoid_rampup

Update = Literal["logit", "feature"]


class Need(str, enum.Enum):
    """What a term takes from the other parts; the step exchanges only what some term needs."""

    RING_MAP = "ring_map"  # the ring predecessor's public feature map (through its transfer layer)
    RING_LOGITS = "ring_logits"  # the ring predecessor's logits
    PEER_LOGITS = "peer_logits"  # every other member's logits
    PEER_MAPS = "peer_maps"  # every other member's public feature map (the ring's common shape)
    PEER_MESSAGES = "peer_messages"  # what each peer's terms send (``Term.to_peers``)
    FUSION = "fusion"  # FFL's fusion part: fused logits back, and the fused loss's gradient on the map
    GATE = "gate"  # the shared trunk's gate over the members (ONE); needs trunk_stages


PEER_NEEDS = frozenset({Need.PEER_LOGITS, Need.PEER_MAPS, Need.PEER_MESSAGES})  # what goes to every peer


class TermSettings(Strict):
    """Settings every term has; a term's own ``Settings`` subclass adds the rest."""

    weight: float = Field(1.0, ge=0)

    def weight_at(self, epoch: int) -> float:
        """The term's weight in ``epoch`` (0-based); constant unless a ramp-up says otherwise."""
        return self.weight


class RampedSettings(TermSettings):
    """A weight that ramps up as exp(−5·(1 − e/R)²) over R epochs (Laine & Aila; FFL's and ONE's code)."""

    rampup_epochs: float = Field(0, ge=0)

    def weight_at(self, epoch: int) -> float:
        return self.weight * sigmoid_rampup(epoch, self.rampup_epochs)


@dataclass
class Batch:
    """What a member's terms see in one step: its own live tensors and what the others sent (detached).

    ``to_peers`` sees the member's own part only (the peers' messages are still on their way)."""

    labels: torch.Tensor
    logits: torch.Tensor  # own, with gradient
    feature: torch.Tensor  # own last feature map, with gradient
    public: torch.Tensor | None = None  # own map through the transfer layer (with gradient)
    index: int = 0  # this member's place in the population
    input: torch.Tensor | None = None  # what the network ran on: the images, or a trunk's shared features
    trunk_messages: dict[str, Any] = field(default_factory=dict)  # term name -> what its trunk hook sent with them
    ids: torch.Tensor | None = None  # each sample's index among the training images, the same every epoch
    epoch: int = 0  # from 0
    step: int = 0  # within the epoch, from 0
    weights: dict[str, float] = field(default_factory=dict)  # every term's weight in this epoch, by term name
    ring_map: torch.Tensor | None = None
    ring_logits: torch.Tensor | None = None
    peer_logits: dict[int, torch.Tensor] = field(default_factory=dict)  # member index -> logits
    peer_maps: dict[int, torch.Tensor] = field(default_factory=dict)  # member index -> public map
    peer_messages: dict[int, dict[str, Any]] = field(default_factory=dict)  # member index -> term name -> message
    fused_logits: torch.Tensor | None = None
    gate: torch.Tensor | None = None  # N × K weights, a leaf whose gradient goes back to the trunk

    def all_logits(self) -> list[torch.Tensor]:
        """Every member's logits in member order: the others' as received, this member's detached."""
        return [
            self.logits.detach() if k == self.index else self.peer_logits[k] for k in range(len(self.peer_logits) + 1)
        ]


@dataclass(frozen=True)
class MemberInfo:
    """What a term may know of the member it is built for. Terms are built under the member's RNG, after its
    network, so a copy of ``network`` (an EMA teacher) starts from the very same weights on every engine."""

    index: int
    count: int  # members in the population
    public_shape: tuple[int, int, int] | None  # the ring's common map shape, when maps are exchanged
    device: torch.device
    num_classes: int = 0
    feature_shape: tuple[int, int, int] | None = None  # this member's own last feature map
    seed: int = 0  # derived from the run's seed and the member's index: for a term's own generators
    steps_per_epoch: int = 0  # so that epoch · steps_per_epoch + step counts the run's steps
    network: nn.Module | None = field(default=None, compare=False)  # the member's network (forward: map, logits)
    # How the member steps an optimizer: a term with an optimizer of its own steps it with stepper.backward(loss)
    # and stepper.step(optimizer) (fp16's loss scaling, the replicas' averaged gradients; else a plain step)
    stepper: Stepper = field(default_factory=lambda: Stepper(Precision("fp32", torch.device("cpu"))), compare=False)
    # Every member's last feature map, in member order (``feature_shapes[index]`` is this member's): a term that
    # meets its peers' maps (a hint from the ring predecessor) sizes its layers from theirs
    feature_shapes: tuple[tuple[int, int, int], ...] = ()


@dataclass
class OwnedOptimizer:
    """An optimizer a term owns, with what its learning rate follows."""

    optimizer: torch.optim.Optimizer
    config: OptimizerConfig


class FusionOptimizerConfig(OptimizerConfig):
    """The fusion part's optimizer: the ``fusion_optimizer`` setting every term that brings a ``Fuser`` has."""

    lr: float | None = Field(None, gt=0)  # None: member 0's learning rate, as in FFL's official code
    weight_decay: float = Field(1e-5, ge=0)  # FFL's official fusion optimizer's


class FuserStep(NamedTuple):
    losses: dict[str, torch.Tensor]  # each of ``columns``, unweighted
    total: torch.Tensor  # what the fusion part steps on
    to_members: list[torch.Tensor | None]  # what each member's terms read as ``batch.fused_logits``
    fused: torch.Tensor | None  # logits of the fused row's training top-1, where there is a fused classifier


class Fuser:
    """The fusion part's modules and loss, brought by the term that needs ``Need.FUSION`` (its ``fuser``). Built
    once, in the fusion part and under its RNG, from that term's settings. Every step it gets every member's map
    and logits as leaves: the gradients its loss leaves on them go back to the members, so the members learn as
    one graph over all of them would (FFL's fused loss, OKDDip's targets, which are not detached)."""

    columns: ClassVar[tuple[str, ...]] = ()  # its losses, unweighted, as the fused row reports them
    classifies: ClassVar[bool] = False  # a fused classifier: the fused row has accuracies (``eval``)

    def __init__(self, settings: RampedSettings, shapes: list[tuple[int, int, int]], num_classes: int):
        self.settings = settings

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def loss(
        self, maps: list[torch.Tensor], logits: list[torch.Tensor], labels: torch.Tensor, weight: float
    ) -> FuserStep:
        raise NotImplementedError

    def eval(self, maps: list[torch.Tensor]) -> torch.Tensor | None:
        """The fused row's logits on an evaluation batch, or None where there is no fused classifier."""
        return None


class TrunkHook:
    """What a term keeps in the shared trunk's part (PCL's temporal mean of the shared stages), brought by the
    term's ``trunk_hook``. Built once, in the trunk part and under its RNG, after the trunk's network (so a copy
    starts identical on every engine), from the term's settings."""

    def __init__(self, settings: TermSettings, trunk: nn.Module, steps_per_epoch: int):
        self.settings = settings

    def modules(self) -> dict[str, nn.Module]:
        """Saved in the trunk's checkpoints, switched between train and eval; not trained by the trunk's loss."""
        return {}

    def to_members(self, images: torch.Tensor) -> Any:
        """What goes with the shared features of ``images`` (a training batch, or one member's stream of it) to the
        members fed them; their terms read it as ``batch.trunk_messages[name]``. None sends nothing."""
        return None

    def after_update(self, epoch: int, step: int) -> None:
        """Runs after the trunk's optimizer stepped (``epoch`` from 0, ``step`` within it)."""

    def deployed(self) -> nn.Module | None:
        """The shared stages every evaluation runs, where they are not the trained ones (PCL's temporal mean;
        the term's member side deploys the matching branch). None: the trunk's own."""
        return None


class Term:
    """Base class: subclasses set the class attributes and ``loss``; the rest is optional."""

    name: ClassVar[str]
    update: ClassVar[Update] = "logit"
    needs: ClassVar[frozenset[Need]] = frozenset()
    Settings: ClassVar[type[TermSettings]] = TermSettings
    extra_columns: ClassVar[tuple[str, ...]] = ()  # values ``after_update`` reports besides the loss
    # With Need.FUSION: the fusion part this term brings, one term per method; its settings' weight and ramp-up
    # weigh the fusion's loss, and its ``fusion_optimizer`` (a FusionOptimizerConfig) steps it
    fuser: ClassVar[type[Fuser] | None] = None
    # On a shared trunk: what this term keeps in the trunk's part (TrunkHook)
    trunk_hook: ClassVar[type[TrunkHook] | None] = None

    def __init__(self, settings: TermSettings, member: MemberInfo):
        self.settings = settings

    @classmethod
    def check(cls, config: Any) -> None:
        """Refuse a run this term cannot serve (``config`` is the validated TrainConfig) with a ConfigError;
        runs once, where the run is planned, before any part starts, on either engine."""

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return (cls.name, *cls.extra_columns)

    @classmethod
    def configured(cls, **defaults: Any) -> TermSpec:
        """This term in a method's row, with defaults for its settings (``PeerKL.configured(temperature=1)``)."""
        cls.Settings.model_validate(defaults)  # a wrong default fails at import, not at a user's run
        return TermSpec(cls, defaults)

    def loss(self, batch: Batch) -> torch.Tensor:
        """The term's unweighted loss for this batch."""
        raise NotImplementedError

    def deployed(self) -> nn.Module | None:
        """The network this member deploys, where it is not the one that trains (PCL's temporal mean): every
        evaluation runs it instead of the member's network. None: the member's network."""
        return None

    def to_peers(self, batch: Batch) -> Any:
        """With ``Need.PEER_MESSAGES``: what this member's term sends every peer, computed after the member's
        forward (tensors, or tuples and dicts of them; they leave detached). Peers read it in
        ``batch.peer_messages[k][name]``; None sends nothing."""
        return None

    def modules(self) -> dict[str, nn.Module]:
        """Modules this term owns (saved in checkpoints, switched between train and eval). Their trainable
        parameters that none of the term's own optimizers steps learn from the member's loss with the member's
        optimizer of this term's update (logit or feature), in every feature-update mode (a FitNets regressor)."""
        return {}

    def optimizers(self) -> dict[str, OwnedOptimizer]:
        return {}

    def after_update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Runs after the member's own optimizers stepped; returns values named in ``extra_columns``."""
        return {}

    def lr_keys(self) -> list[str]:
        """The config keys of this term's own learning rates: what to lower when its update diverges."""
        return [
            f"method.terms.{self.name}.{key}.lr" for key, value in self.settings if isinstance(value, OptimizerConfig)
        ]


@dataclass(frozen=True)
class TermSpec:
    """A term as it stands in a method's row: its class and the method's defaults for its settings."""

    term: type[Term]
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.term.name

    def settings(self, user: dict[str, Any] | None = None) -> TermSettings:
        """The method's defaults, then the user's values, validated by the term's settings model."""
        return self.term.Settings.model_validate({**self.defaults, **(user or {})})

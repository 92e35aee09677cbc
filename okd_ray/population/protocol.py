"""What the parts of a population take and return, declared once.

Each message is bundled for one consumer, so a transport moves only what that consumer needs. A part
method returns a NamedTuple of messages (``MemberForward``, ``FusionStep``, ...) or a single value;
the engines derive their Ray return counts and compiled-graph outputs from that annotation
(``num_returns``, ``flatten``, ``nest``): one Ray return per field, and a field annotated
``tuple[X, ...]`` holds one value per member.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from torch import Tensor

from okd_ray.config import TrainConfig
from okd_ray.errors import TrainingDiverged
from okd_ray.methods import Need

Metrics = dict[str, float]  # a part's loss terms (unweighted), ``train_correct`` and ``n`` for one step


@dataclass(frozen=True)
class PartId:
    """Who a part is: member k (of an architecture), the fusion, the trunk, or a row of combined members: their
    ensemble (mean logits), or ONE's gated teacher (``teacher``, ONE-E in its paper)."""

    kind: Literal["member", "fused", "trunk", "ensemble", "teacher"]
    index: int | None = None
    arch: str | None = None

    @property
    def name(self) -> str:
        """As in tables and ``metrics.parquet``: ``m0:resnet32``, ``fused``, ``trunk``, ``ensemble``."""
        return f"m{self.index}:{self.arch}" if self.kind == "member" else self.kind

    @property
    def key(self) -> str:
        """As in metric names (``m0_test_top1``, ``fused_test_top1``)."""
        return f"m{self.index}" if self.kind == "member" else self.kind


def parts_of(config: TrainConfig) -> list[PartId]:
    """The parts a run of ``config`` has, in the order every engine builds them: members, fusion, trunk."""
    parts = [PartId("member", k, m.arch) for k, m in enumerate(config.members)]
    parts += [PartId("fused")] if Need.FUSION in config.method.method.needs else []
    return parts + ([PartId("trunk")] if config.trunk_stages else [])


def replicas_of(config: TrainConfig) -> list[int]:
    """Each part's replica count, in ``parts_of`` order: a member's own; the fusion's and the trunk's the members'
    (one count for all, where parts exchange anything)."""
    return [
        config.members[p.index].replicas if p.kind == "member" else config.members[0].replicas for p in parts_of(config)
    ]


class RingMessage(NamedTuple):
    """Member k → member k+1: the sender's public map (its map through its transfer layer; the receiver's own is
    ``Batch.public``) and its logits (None where no term needs them)."""

    map: Tensor | None
    logits: Tensor | None


class FusionInput(NamedTuple):
    """Member → fusion: the last feature map, the logits (for the ensemble teacher) and the labels."""

    feature: Tensor
    logits: Tensor
    labels: Tensor


class FusedMessage(NamedTuple):
    """Fusion → member k: what its terms read as ``fused_logits``, and the fusion loss's gradients on member k's
    feature map and logits (None where the loss does not reach them)."""

    logits: Tensor | None
    feature_grad: Tensor | None
    logits_grad: Tensor | None


class SharedMessage(NamedTuple):
    """Trunk → a member: the shared features, the gate over members (ONE) or None, the labels and, in training,
    the samples' ids and what the terms' trunk hooks send (term name -> message; None without)."""

    features: Tensor
    gate: Tensor | None
    labels: Tensor
    ids: Tensor | None = None
    messages: dict[str, Any] | None = None


class TrunkGrad(NamedTuple):
    """Member → trunk: the gradient of the member's loss on the shared features and on the gate."""

    features: Tensor
    gate: Tensor | None


class PeerMessage(NamedTuple):
    """Member k → every other member: its logits, its public map and its terms' own messages (each None where
    no term needs it)."""

    logits: Tensor | None
    map: Tensor | None  # the sender's public map
    messages: dict[str, Any] | None  # term name -> what its ``to_peers`` sent


class MemberForward(NamedTuple):
    ring: RingMessage | None  # for the ring successor
    to_fusion: FusionInput | None
    to_peers: PeerMessage | None  # for every peer (DML, KDCL, ONE, and terms' own messages)


class MemberUpdate(NamedTuple):
    done: int  # the step's index in the epoch: what a driver waits on (the metrics stay on the device)
    to_trunk: TrunkGrad | None


class FusionStep(NamedTuple):
    done: int
    to_members: tuple[FusedMessage, ...]


class TrunkForward(NamedTuple):
    shared: tuple[SharedMessage, ...]  # member k's: the one batch's, or its own stream's (data.augment_per_member)


class TrunkEval(NamedTuple):
    shared: SharedMessage  # for every member
    gate: Tensor | None  # for the evaluation: ONE's gate weights the members' logits into its teacher


class MemberEval(NamedTuple):
    feature: Tensor | None  # for the fusion
    logits: Tensor
    labels: Tensor


class EpochLog(NamedTuple):
    """A part's epoch, read once at its end (``Part.end_epoch``): each step's metrics ({} for a part that reports
    none), and the first value that was not finite, if one was."""

    steps: list[Metrics]
    diverged: TrainingDiverged | None


class MemberPart(Protocol):
    def forward(self, shared: SharedMessage | None) -> MemberForward: ...

    def update(self, ring: RingMessage | None, fused: FusedMessage | None, *peers: PeerMessage) -> MemberUpdate: ...

    def eval_next(self, shared: SharedMessage | None) -> MemberEval: ...


class FusionPart(Protocol):
    def step(self, *inputs: FusionInput) -> FusionStep: ...

    def eval(self, *features: Tensor) -> Tensor: ...


class TrunkPart(Protocol):
    def forward(self) -> TrunkForward: ...

    def update(self, *grads: TrunkGrad) -> int: ...

    def eval_next(self) -> TrunkEval: ...


def outputs(method: Callable) -> type[tuple] | None:
    """The NamedTuple a part method returns, or None for a single value."""
    return _outputs(getattr(method, "__func__", method))  # a bound method: its function's annotations


@functools.cache  # read on every remote call; annotations are fixed once a class is defined
def _outputs(function: Callable) -> type[tuple] | None:
    returned = typing.get_type_hints(function).get("return")
    return (
        returned
        if isinstance(returned, type) and issubclass(returned, tuple) and hasattr(returned, "_fields")
        else None
    )


@functools.cache
def _per_member(shape: type[tuple], field: str) -> bool:
    hint = typing.get_type_hints(shape)[field]
    return typing.get_origin(hint) is tuple and typing.get_args(hint)[-1:] == (Ellipsis,)


def return_names(method: Callable, members: int) -> list[str]:
    """The field each flat return value of a part method belongs to (one per member for per-member fields)."""
    shape = outputs(method)
    if shape is None:
        return ["value"]
    return [f for f in shape._fields for _ in range(members if _per_member(shape, f) else 1)]


def num_returns(method: Callable, members: int) -> int:
    return len(return_names(method, members))


def flatten(value: Any, method: Callable) -> Any:
    """A part method's result as the flat values a remote call returns, one per Ray return."""
    shape = outputs(method)
    if shape is None:
        return value
    flat = []
    for field, item in zip(shape._fields, value):
        flat += list(item) if _per_member(shape, field) else [item]
    return tuple(flat) if len(flat) > 1 else flat[0]


def nest(flat: Sequence[Any] | Any, method: Callable, members: int) -> Any:
    """The inverse of ``flatten`` over futures or graph nodes: the NamedTuple the step code reads."""
    shape = outputs(method)
    if shape is None:
        return flat
    flat = list(flat) if isinstance(flat, (list, tuple)) else [flat]
    values, i = [], 0
    for field in shape._fields:
        if _per_member(shape, field):
            values.append(tuple(flat[i : i + members]))
            i += members
        else:
            values.append(flat[i])
            i += 1
    return shape(*values)

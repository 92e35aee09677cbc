"""The population step and evaluation, written once for every engine.

The parts are the plain objects (local engine) or handles whose methods return futures or graph nodes
(Ray engine): a future passed as an argument travels part to part, so the same code is the Ray dataflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from okd_ray.methods import PEER_NEEDS, Need

from .protocol import EpochLog, FusionPart, MemberPart, Metrics, PartId, TrunkPart


@dataclass
class Population:
    """The parts of a population, as objects or as remote handles."""

    members: Sequence[MemberPart]
    fusion: FusionPart | None
    trunk: TrunkPart | None
    needs: frozenset[Need]  # what the method's terms take from the exchange

    @classmethod
    def of(cls, ids: Sequence[PartId], parts: Sequence[Any], needs: frozenset[Need]) -> Population:
        """The population from parts (or handles) listed as ``parts_of`` lists their ids."""
        by_kind = {pid.kind: part for pid, part in zip(ids, parts)}
        members = [part for pid, part in zip(ids, parts) if pid.kind == "member"]
        return cls(members, by_kind.get("fused"), by_kind.get("trunk"), needs)


@dataclass
class StepDone:
    """What each part returns once its share of a step is done (the step's index, or a future of it): what a
    driver waits on. The metrics stay with the parts until the epoch ends (``epoch_metrics``)."""

    members: list[Any]
    fusion: Any | None
    trunk: Any | None

    def in_part_order(self) -> list[Any]:
        """As ``parts_of`` orders the parts: members, fusion, trunk."""
        return [*self.members, *(m for m in (self.fusion, self.trunk) if m is not None)]


def population_step(population: Population) -> StepDone:
    """One batch for the whole population."""
    members, fusion, trunk = population.members, population.fusion, population.trunk
    count = len(members)
    # 0. A shared trunk computes the features every member starts from.
    shared = trunk.forward().shared if trunk is not None else None
    # 1. Every member runs the same (seeded) batch.
    sent = [m.forward(shared[k] if shared else None) for k, m in enumerate(members)]
    # 2./3. FFL: the fusion trains on all feature maps and returns its logits and each map's gradient.
    fused, fusion_done = [None] * count, None
    if fusion is not None:
        fusion_done, fused = fusion.step(*(s.to_fusion for s in sent))
    # 4. Each member learns from its ring predecessor k-1, its peers and the fusion.
    peers = bool(PEER_NEEDS & population.needs)
    updates = [
        member.update(sent[k - 1].ring, fused[k], *(sent[j].to_peers for j in range(count) if peers and j != k))
        for k, member in enumerate(members)
    ]
    # 5. The trunk steps on the sum of the gradients the members send back.
    trunk_done = trunk.update(*(u.to_trunk for u in updates)) if trunk is not None else None
    return StepDone([u.done for u in updates], fusion_done, trunk_done)


def epoch_metrics(logs: Sequence[EpochLog]) -> list[list[Metrics]]:
    """Each step's metrics in ``parts_of`` order, from every part's log of the epoch (``Part.end_epoch``); a value
    that was not finite raises TrainingDiverged: the earliest step's, and of that step the first part's."""
    diverged = [log.diverged for log in logs if log.diverged is not None]
    if diverged:
        raise min(diverged, key=lambda e: e.step)  # min keeps the first of equal steps: parts_of order
    return [list(step) for step in zip(*(log.steps for log in logs), strict=True)]


def population_eval(population: Population, num_batches: int) -> list[tuple[Any, list[Any], Any]]:
    """An evaluation split through every member (and the fusion), once every part's ``begin_eval`` has run: per
    batch (labels, [member logits], fused logits or None, ONE's gate or None)."""
    members, fusion, trunk = population.members, population.fusion, population.trunk
    batches = []
    for _ in range(num_batches):
        shared = trunk.eval_next() if trunk is not None else None
        outputs = [m.eval_next(shared.shared if shared else None) for m in members]
        fused = fusion.eval(*(o.feature for o in outputs)) if fusion is not None else None
        batches.append((outputs[0].labels, [o.logits for o in outputs], fused, shared.gate if shared else None))
    return batches

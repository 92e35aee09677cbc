"""The population step and evaluation, written once for every engine.

``members`` and ``fusion`` are the plain objects (local engine) or handles whose methods return futures
(Ray engine): a future passed as an argument travels actor to actor, so the same code is the Ray dataflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from okd_ray.methods import MethodSpec


def population_step(members: Sequence[Any], fusion: Any | None, spec: MethodSpec) -> tuple[list[Any], Any]:
    """One batch for the whole population; returns each member's metrics and the fusion's (or None)."""
    count = len(members)
    # 1. Every member runs the same (seeded) batch.
    labels, maps, public, logits = zip(*(m.forward() for m in members))
    # 2./3. FFL: the fusion trains on all feature maps and returns its logits and each map's gradient.
    fused, grads, fusion_metrics = None, [None] * count, None
    if fusion is not None:
        fusion_metrics, fused, *grads = fusion.step(labels[0], *maps, *logits)
    # 4. Each member learns from its ring predecessor k-1 (or all peers, for DML) and the fusion.
    member_metrics = []
    for k, member in enumerate(members):
        prev = (k - 1) % count
        if spec.logit_peers == "ring":
            peers = [logits[prev]]
        elif spec.logit_peers == "all":
            peers = [logits[j] for j in range(count) if j != k]
        else:
            peers = []
        member_metrics.append(member.update(public[prev], fused, grads[k], *peers))
    return member_metrics, fusion_metrics


def population_eval(members: Sequence[Any], fusion: Any | None, num_batches: int) -> list[tuple]:
    """Run the test set through every member (and the fusion): per batch (labels, [member logits], fused)."""
    for m in members:
        m.begin_eval()
    batches = []
    for _ in range(num_batches):
        labels, maps, logits = zip(*(m.eval_next() for m in members))
        fused = fusion.eval(*maps) if fusion is not None else None
        batches.append((labels[0], list(logits), fused))
    return batches

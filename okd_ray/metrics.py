"""Per-epoch metrics: running means of loss terms, test accuracy, and the rows of ``metrics.parquet``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import pyarrow as pa
import torch

COLUMNS = [
    "run", "method", "epoch", "part", "kind", "arch",
    "ce", "kl_peer", "kl_fused", "adv_g", "align", "disc", "fused_ce", "fused_kl",
    "train_top1", "test_top1", "test_top5",
    "lr_logit", "lr_feature", "lr_disc", "lr_fusion", "epoch_seconds", "elapsed_seconds",
]


class Meter:
    """Batch-size-weighted means of loss terms, and training top-1 from correct counts."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.n = 0
        self.correct = 0

    def add(self, values: dict[str, float]) -> None:
        n = values["n"]
        self.n += n
        self.correct += values["train_correct"]
        for key, value in values.items():
            if key not in ("n", "train_correct"):
                self.sums[key] += value * n

    def result(self) -> dict[str, float]:
        out = {k: v / self.n for k, v in self.sums.items()}
        out["train_top1"] = 100.0 * self.correct / self.n
        return out


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> list[int]:
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hits = top == labels.unsqueeze(1)
    return [int(hits[:, : min(k, k_max)].any(1).sum()) for k in ks]


def test_accuracy(batches: list[tuple], names: list[str]) -> dict[str, dict[str, float]]:
    """Top-1/top-5 (%) of each member, of the ensemble (mean of member logits) and of the fused classifier."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    total = 0
    for labels, logits, fused in batches:
        labels = labels.cpu()
        logits = [z.cpu() for z in logits]
        total += len(labels)
        parts = dict(zip(names, logits))
        if len(logits) > 1:
            parts["ensemble"] = torch.stack(logits).mean(0)
        if fused is not None:
            parts["fused"] = fused.cpu()
        for name, z in parts.items():
            top1, top5 = topk_correct(z, labels)
            counts[name][0] += top1
            counts[name][1] += top5
    return {name: {"test_top1": 100.0 * c1 / total, "test_top5": 100.0 * c5 / total} for name, (c1, c5) in counts.items()}


def complete(row: dict) -> dict:
    """The row with every column of the schema, in order (terms a method lacks are None)."""
    return {c: row.get(c) for c in COLUMNS}


def to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([complete(row) for row in rows], schema=SCHEMA)


SCHEMA = pa.schema(
    [(c, pa.string()) if c in ("run", "method", "part", "kind", "arch") else (c, pa.int64()) if c == "epoch"
     else (c, pa.float64()) for c in COLUMNS]
)

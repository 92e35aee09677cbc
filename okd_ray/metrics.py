"""Per-epoch metrics: running means of loss terms, validation and test accuracy, the rows of ``metrics.parquet``."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable

import pyarrow as pa
import torch

IDENTITY = ["run", "method", "epoch", "part", "kind", "arch"]
ACCURACY = ["train_top1", "val_top1", "val_top5", "test_top1", "test_top5"]
TIMINGS = ["epoch_seconds", "elapsed_seconds"]


def columns(rows: list[dict]) -> list[str]:
    """The table's columns: who and when, every loss term the parts reported (in the order they reported
    them, so a new term needs no list), accuracies, learning rates, timings."""
    seen = list(dict.fromkeys(k for row in rows for k in row))
    accuracy = [c for c in ACCURACY if c in seen or not c.startswith("val_")]  # val_*: with a validation split
    return IDENTITY + loss_columns(seen) + accuracy + [c for c in seen if c.startswith("lr_")] + TIMINGS


def loss_columns(names: Iterable[str]) -> list[str]:
    """The loss-term columns among ``names`` (of a table or a row)."""
    fixed = set(IDENTITY + ACCURACY + TIMINGS)
    return [c for c in names if c not in fixed and not c.startswith("lr_")]


class Meter:
    """Batch-size-weighted means of loss terms, and training top-1 from correct counts."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.n = 0
        self.correct: int | None = None  # None: the part classifies nothing (OKDDip's attention part)

    def add(self, values: dict[str, float]) -> None:
        if not values:  # a part with no loss of its own (the trunk)
            return
        n = values["n"]
        self.n += n
        if "train_correct" in values:
            self.correct = (self.correct or 0) + values["train_correct"]
        for key, value in values.items():
            if key not in ("n", "train_correct"):
                self.sums[key] += value * n

    def result(self) -> dict[str, float]:
        if not self.n:
            return {}
        out = {k: v / self.n for k, v in self.sums.items()}
        if self.correct is not None:
            out["train_top1"] = 100.0 * self.correct / self.n
        return out


def epoch_means(names: list[str], steps: list[list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each part's (``names``, in order) means over an epoch's ``steps``, each step's metrics in the parts' order."""
    meters = {name: Meter() for name in names}
    for step in steps:
        for meter, values in zip(meters.values(), step, strict=True):
            meter.add(values)
    return {name: meter.result() for name, meter in meters.items()}


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> list[int]:
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hits = top == labels.unsqueeze(1)
    return [int(hits[:, : min(k, k_max)].any(1).sum()) for k in ks]


def accuracy(batches: list[tuple], names: list[str], split: str) -> dict[str, dict[str, float]]:
    """Top-1/top-5 (%) on ``split`` (``val_top1``, ``test_top5``, ...) of each member, of the ensemble (mean of
    member logits), of the fused classifier and of ONE's gated teacher Σ g_k·z_k."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    total = 0
    for labels, logits, fused, gate in batches:
        labels = labels.cpu()
        logits = [z.cpu() for z in logits]
        total += len(labels)
        parts = dict(zip(names, logits))
        if len(logits) > 1:
            parts["ensemble"] = ensemble_logits(logits)
        if fused is not None:
            parts["fused"] = fused.cpu()
        if gate is not None:
            parts["teacher"] = teacher_logits(gate.cpu(), logits)
        for name, z in parts.items():
            top1, top5 = topk_correct(z, labels)
            counts[name][0] += top1
            counts[name][1] += top5
    return {
        name: {f"{split}_top1": 100.0 * c1 / total, f"{split}_top5": 100.0 * c5 / total}
        for name, (c1, c5) in counts.items()
    }


def ensemble_logits(logits: list[torch.Tensor]) -> torch.Tensor:
    """The ensemble row's logits: the mean of the members'."""
    return torch.stack(logits).mean(0)


def teacher_logits(gate: torch.Tensor, logits: list[torch.Tensor]) -> torch.Tensor:
    """ONE's gated teacher row's logits: Σ g_k·z_k, with the gate's N×K weights."""
    return sum(gate[:, k : k + 1] * z for k, z in enumerate(logits))


def union_table(rows: list[dict]) -> pa.Table:
    """Rows with different keys as one table of every key (None where a row lacks one); ``Table.from_pylist``
    alone takes the columns from the first row and drops the rest."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return pa.Table.from_pylist([{k: row.get(k) for k in keys} for row in rows])


def to_table(rows: list[dict]) -> pa.Table:
    """Rows as a table with every column (None where a part lacks a term): strings, the epoch, floats."""
    names = columns(rows)
    schema = pa.schema(
        [
            (c, pa.string())
            if c in IDENTITY and c != "epoch"
            else (c, pa.int64())
            if c == "epoch"
            else (c, pa.float64())
            for c in names
        ]
    )
    return pa.Table.from_pylist([{c: row.get(c) for c in names} for row in rows], schema=schema)


def digest(rows: list[dict]) -> str:
    """The sha256 of ``rows`` as ``metrics.parquet`` holds them, whatever the file's encoding and whatever columns
    later rows add (None is no value): what the manifest records of a checkpoint's epochs."""
    text = json.dumps([{k: v for k, v in sorted(row.items()) if v is not None} for row in rows])
    return hashlib.sha256(text.encode()).hexdigest()

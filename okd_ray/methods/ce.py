"""Cross-entropy with the labels: every member's own supervised term."""

import torch
import torch.nn.functional as F

from .term import Batch, Term


class CrossEntropy(Term):
    name = "ce"

    def loss(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(batch.logits, batch.labels)

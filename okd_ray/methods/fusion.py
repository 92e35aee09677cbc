"""FFL's fusion module (Kim et al., 2019), generalised from two same-shape branches to K of any shape."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class FusionModule(nn.Module):
    """Concatenate K feature maps, then depthwise 3×3, BN, ReLU, pointwise 1×1, BN, ReLU, pool, classifier.

    Maps are average-pooled to the smallest spatial size before concatenation. The pointwise conv maps
    ΣC_k channels to ``max C_k`` (the reference code's 2C → C for two equal branches).
    """

    def __init__(self, shapes: list[tuple[int, int, int]], num_classes: int):
        super().__init__()
        self.size = (min(s[1] for s in shapes), min(s[2] for s in shapes))
        total, out = sum(s[0] for s in shapes), max(s[0] for s in shapes)
        self.fuse = nn.Sequential(
            nn.Conv2d(total, total, 3, padding=1, groups=total, bias=False),
            nn.BatchNorm2d(total),
            nn.ReLU(),
            nn.Conv2d(total, out, 1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(out, num_classes)
        for m in self.fuse:
            if isinstance(m, nn.Conv2d):  # the reference code's He-style init
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        pooled = [f if f.shape[-2:] == self.size else F.adaptive_avg_pool2d(f, self.size) for f in features]
        fused = self.fuse(torch.cat(pooled, dim=1))
        return self.classifier(F.adaptive_avg_pool2d(fused, 1).flatten(1))

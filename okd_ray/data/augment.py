"""Random pad-crop and horizontal flip for a whole batch at once, drawn from an explicit generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PadCropFlip:
    """Pad, crop back to the original size at a random offset, flip half the images.

    The standard CIFAR recipe (pad 4, crop 32, flip). Works on a batch with one gather instead of a
    Python loop per image, and draws only from the generator it is given.
    """

    pad: int
    mode: str = "constant"  # zeros, as torchvision's RandomCrop(padding=...); "reflect" for CIFAR

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = images.shape
        device = images.device  # the draws are the CPU generator's wherever the images are
        padded = F.pad(images, [self.pad] * 4, mode=self.mode)
        dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g).to(device)
        dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=g).to(device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        crops = padded[
            torch.arange(n, device=device)[:, None, None, None],
            torch.arange(c, device=device)[None, :, None, None],
            rows,
            cols,
        ]
        flip = (torch.rand(n, generator=g) < 0.5).to(device)[:, None, None, None]
        return torch.where(flip, crops.flip(-1), crops)

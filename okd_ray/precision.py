"""Mixed precision in one part (``precision: fp32 | bf16 | fp16``): autocast on the part's device and, for fp16,
loss scaling with a GradScaler whose state is in the part's checkpoint.

Every part scales its own losses and keeps its own scale. A gradient that crosses parts (the fusion's on a
member's map, a member's on the trunk's features) travels unscaled, in fp32, and its receiver scales it by its
own scale, so parts whose scales differ (one skipped a step on an overflow) still compute one graph's gradients.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

PrecisionName = Literal["fp32", "bf16", "fp16"]
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, name: PrecisionName, device: torch.device):
        self.name, self.device, self.dtype = name, device, DTYPES[name]
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        """Where the part computes (forward passes and losses; not the backward)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scale(self, value: torch.Tensor | None) -> torch.Tensor | None:
        """A loss, or a gradient this part received, times this part's scale (itself without fp16)."""
        if self.scaler is None or not isinstance(value, torch.Tensor):
            return value  # also a method's 0 where it has no feature terms
        return self.scaler.scale(value)

    def unscaled(self, grad: torch.Tensor | None) -> torch.Tensor | None:
        """A gradient of this part's scaled loss, as it leaves the part: divided by the scale, in fp32."""
        if self.scaler is None or grad is None:
            return grad
        return grad.float() / self.scaler.scale(torch.ones((), device=grad.device))

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer steps on its parameters' gradients, unscaled; with fp16 not at all if one overflowed
        (GradScaler's check reads one value from the device: fp16's one host sync per optimizer step)."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)

    def update(self) -> None:
        """Once a step, after every optimizer of the part stepped: the next scale."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None:
            self.scaler.load_state_dict(state)

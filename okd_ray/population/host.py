"""Where a part's device values reach the host. A read waits for every kernel queued before it (a host sync),
so the parts read once an epoch (``Part.end_epoch``), never per step; ``HostSyncs`` counts the reads that any
code makes (a term's ``.item()`` too), so a test can hold the step to none.
"""

from __future__ import annotations

import sys

import torch
from torch.overrides import TorchFunctionMode

# The Tensor methods that hand a value to Python, and so wait for the device.
READS = frozenset(
    {
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.__bool__,
        torch.Tensor.__int__,
        torch.Tensor.__float__,
        torch.Tensor.__index__,
        torch.Tensor.numpy,
    }
)


def to_host(values: torch.Tensor) -> list:
    """``values`` as Python numbers: the one read of a part's epoch."""
    return values.tolist()


class HostSyncs(TorchFunctionMode):
    """Counts the reads of tensor values into Python made while it is active (``with HostSyncs() as syncs``), on
    any device. ``torch.optim``'s own reads are not counted: its optimizers keep their step counters on the host
    (``capturable=False``), so reading them waits for no device."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS and not sys._getframe(1).f_globals.get("__name__", "").startswith("torch.optim"):
            self.count += 1
        return func(*args, **(kwargs or {}))

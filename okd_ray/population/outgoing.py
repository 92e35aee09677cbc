"""What a part hands to another part: made here, once, for every engine and transport.

A tensor leaves a part detached and contiguous. Transports serialise raw memory, so a strided view (say,
a pooled map) would arrive repacked in one engine and as it was in the other; the receiver's kernels
would then see different layouts and round differently. Packing at the source makes both engines
compute on the very same bytes.
"""

from __future__ import annotations

from typing import Any

import torch


def outgoing(value: Any) -> Any:
    """``value`` as it may leave a part: tensors (also inside tuples, lists, dicts) detached and contiguous."""
    if isinstance(value, torch.Tensor):
        return value.detach().contiguous()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a message (NamedTuple)
        return type(value)(*(outgoing(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(outgoing(v) for v in value)
    if isinstance(value, dict):
        return {k: outgoing(v) for k, v in value.items()}
    return value

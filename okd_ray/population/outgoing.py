"""What a part hands to another part: made here, once, for every engine and transport.

A tensor leaves a part detached and contiguous. Transports serialise raw memory, so a strided view (say,
a pooled map) would arrive repacked in one engine and as it was in the other; the receiver's kernels
would then see different layouts and round differently. Packing at the source makes both engines
compute on the very same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``fn`` applied to every tensor in it, also inside messages (NamedTuples), tuples, lists and
    dicts."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a message (NamedTuple)
        return type(value)(*(map_tensors(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value


def outgoing(value: Any) -> Any:
    """``value`` as it may leave a part: tensors (also inside tuples, lists, dicts) detached and contiguous."""
    return map_tensors(value, lambda t: t.detach().contiguous())

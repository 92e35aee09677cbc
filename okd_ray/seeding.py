"""Seeds derived from (seed, epoch, ...) keys, so processes agree without sharing or touching global RNGs."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*keys: object) -> int:
    """Hash the keys into a 63-bit seed: nearby keys ((0, 1) and (1, 0)) give unrelated streams."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(*keys: object) -> torch.Generator:
    """A private CPU generator seeded from the keys; using it leaves torch's global RNG alone."""
    return torch.Generator().manual_seed(derive_seed(*keys))

"""What every part (member, fusion, trunk) has: a private RNG, modules and optimizers, checkpoints."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from okd_ray.checkpoint import Shard, load_shard, save_shard
from okd_ray.data.base import Split
from okd_ray.errors import TrainingDiverged
from okd_ray.methods import OwnedOptimizer
from okd_ray.optim import set_epoch_lr
from okd_ray.seeding import derive_seed
from okd_ray.storage import RunStore

from .rng import PrivateRNG
from .spec import PartSpec


class Part:
    """Subclasses fill ``modules`` and ``optimizers``; learning rates follow the epoch, so a checkpoint
    (modules, optimizers, RNG) is the part's whole state."""

    def __init__(self, spec: PartSpec, seed_keys: tuple, device: torch.device):
        self.spec, self.name, self.device = spec, spec.pid.name, torch.device(device)
        self.rng = PrivateRNG(derive_seed(spec.seed, *seed_keys))
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, OwnedOptimizer] = {}
        self.epoch, self.step_index = 0, 0

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        """Train mode and this epoch's learning rates; returns them as ``lr_<optimizer>``."""
        self.epoch, self.step_index = epoch, 0
        for module in self.modules.values():
            module.train()
        return {f"lr_{key}": set_epoch_lr(owned.optimizer, owned.config, self.spec.schedule, epoch, self.spec.epochs)
                for key, owned in self.optimizers.items()}

    def begin_eval(self, split: Split) -> None:
        """Eval mode, before the batches of ``split`` (``val`` or ``test``) go through the population."""
        for module in self.modules.values():
            module.eval()

    def check_finite(self, values: dict[str, torch.Tensor], *keys: str | Callable[[str], list[str]]) -> None:
        """Name the part, the value, the epoch and the step where training diverged, and the config keys to
        lower: ``keys``, each a key or a function of the value's name that gives keys."""
        stacked = torch.stack([v.detach().float().sum() for v in values.values()])
        if bool(torch.isfinite(stacked).all()):
            return
        name, value = next((n, float(v)) for n, v in zip(values, stacked) if not torch.isfinite(v))
        lower = [k for key in keys for k in ([key] if isinstance(key, str) else key(name))]
        raise TrainingDiverged(self.name, name, value, self.epoch + 1, self.step_index + 1, tuple(lower))

    def state_dict(self) -> dict:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.optimizer.state_dict() for k, o in self.optimizers.items()},
            "rng": self.rng.state_dict(),
        }

    def save(self, store_uri: str, path: str) -> Shard:
        """Write this part's checkpoint shard straight to the run's storage (no state passes a driver); returns
        its size and digest for the manifest."""
        return save_shard(RunStore(store_uri), path, self.state_dict())

    def load(self, store_uri: str, path: str, shard: Shard | None) -> None:
        """Load this part's shard once it matches the size and digest that ``save`` returned."""
        self.load_state_dict(load_shard(RunStore(store_uri), path, shard))

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.optimizer.load_state_dict(state["optimizers"][k])
        self.rng.load_state_dict(state["rng"])

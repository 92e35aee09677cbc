"""What every part (member, fusion, trunk) has: a private RNG, modules and optimizers, checkpoints."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from okd_ray.checkpoint import Checkpoint, Shard, load_shard, save_shard, shard_path
from okd_ray.data.base import Dataset, Split, on_device
from okd_ray.errors import TrainingDiverged
from okd_ray.execution import as_input
from okd_ray.methods import OwnedOptimizer
from okd_ray.optim import Stepper, set_epoch_lr
from okd_ray.precision import Precision
from okd_ray.seeding import derive_seed
from okd_ray.storage import RunStore

from .host import to_host
from .protocol import EpochLog
from .replicas import Gather, average
from .rng import PrivateRNG
from .spec import PartSpec
from .sync_batchnorm import synchronise_batchnorm


class Logged(NamedTuple):
    name: str
    value: torch.Tensor  # 0-d float32, on the part's device
    keys: tuple  # what to lower when it is not finite; empty: not checked
    metric: bool


class Part:
    """Subclasses fill ``modules`` and ``optimizers``; learning rates follow the epoch, so a checkpoint
    (modules, optimizers, RNG) is the part's whole state."""

    def __init__(self, spec: PartSpec, seed_keys: tuple, device: torch.device, dataset: Dataset | None = None):
        """``dataset``: the run's, built once by the plan, where the part draws batches itself (``reads_data``)."""
        self.spec, self.name, self.device = spec, spec.pid.name, torch.device(device)
        self.dataset = on_device(dataset, self.device)
        self.seed_keys = seed_keys
        self.rng = PrivateRNG(derive_seed(spec.seed, *seed_keys))
        self.precision = Precision(spec.precision, self.device)
        self.stepper = Stepper(self.precision)  # every optimizer step of the part
        self.gather: Gather | None = None  # with replicas: every replica's tensor, in replica order
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, OwnedOptimizer] = {}
        self.epoch, self.step_index = 0, 0
        self._step: list[Logged] = []  # this step's logged values
        self._steps: list[tuple[list[Logged], int | None]] = []  # this epoch's, with each step's batch size

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of images (or the trunk's shared features) as the part computes on them: on its device, in its
        memory format."""
        return as_input(x, self.device, self.spec.memory_format)

    def join_replicas(self, gather: Gather) -> None:
        """With replicas, once built (identical, from one RNG stream): ``gather`` meets the part's other replicas.
        From here on each replica draws from a stream of its own (its dropout masks are its own). With
        ``sync_batchnorm``, its batch-norm layers normalise with every replica's statistics together."""
        self.gather = gather
        self.stepper.average = lambda tensors: average(tensors, gather)
        if self.spec.sync_batchnorm:
            for module in self.modules.values():
                synchronise_batchnorm(module, gather, self.spec.replica)
        if self.spec.replica:
            self.rng = PrivateRNG(derive_seed(self.spec.seed, *self.seed_keys, "replica", self.spec.replica))

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        """Train mode and this epoch's learning rates; returns them as ``lr_<optimizer>``."""
        self.epoch, self.step_index = epoch, 0
        for module in self.modules.values():
            module.train()
        return {
            f"lr_{key}": set_epoch_lr(owned.optimizer, owned.config, self.spec.schedule, epoch, self.spec.epochs)
            for key, owned in self.optimizers.items()
        }

    def begin_eval(self, split: Split) -> None:
        """Eval mode, before the batches of ``split`` (``val`` or ``test``) go through the population."""
        for module in self.modules.values():
            module.eval()

    def log(
        self, values: dict[str, torch.Tensor], *keys: str | Callable[[str], list[str]], metric: bool = True
    ) -> None:
        """Keep this step's ``values`` (on the device: nothing waits for them) for ``end_epoch``. With ``keys``, a
        value that is not finite there names the part, the value, the epoch and the step, and the config keys to
        lower: each a key or a function of the value's name that gives keys. ``metric``: a column of the row."""
        self._step.extend(Logged(name, value.detach().float().sum(), keys, metric) for name, value in values.items())

    def end_step(self, n: int | None) -> None:
        """The step's values are all logged and its optimizers have stepped; ``n`` is its batch size (None: the
        part reports no metrics). fp16's next loss scale; replicas average their float buffers (batch norm's
        running statistics), so that they stay identical."""
        self._steps.append((self._step, n))
        self._step = []
        self.precision.update()
        if self.gather is not None:
            average([b for m in self.modules.values() for b in m.buffers() if b.is_floating_point()], self.gather)

    def end_epoch(self) -> EpochLog:
        """Every step's metrics of the epoch, read from the device at once (one host sync an epoch), and the first
        value that was not finite, if any."""
        steps, self._steps = self._steps, []
        logged = [e.value for entries, _ in steps for e in entries]
        values = iter(to_host(torch.stack(logged)) if logged else [])
        metrics, diverged = [], None
        for step, (entries, n) in enumerate(
            steps, self.step_index - len(steps)
        ):  # the epoch's steps since the last read
            row = {}
            for entry, value in zip(entries, values):
                if entry.keys and not math.isfinite(value) and diverged is None:
                    lower = [k for key in entry.keys for k in ([key] if isinstance(key, str) else key(entry.name))]
                    diverged = TrainingDiverged(self.name, entry.name, value, self.epoch + 1, step + 1, tuple(lower))
                if entry.metric:
                    row[entry.name] = value
            metrics.append({**row, "n": n} if n is not None else {})
        return EpochLog(metrics, diverged)

    def state_dict(self) -> dict:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.optimizer.state_dict() for k, o in self.optimizers.items()},
            "rng": self.rng.state_dict(),
            "precision": self.precision.state_dict(),  # fp16's loss scale; empty otherwise
        }

    def save(self, store_uri: str, folder: str) -> dict[str, Shard]:
        """Write this part's checkpoint shard into ``folder`` of the run's storage (no state passes a driver);
        returns it by key with its size and digest, for the manifest. Replicas are identical but for their RNG
        streams: the first writes the part's state, each other one its RNG state alone (``m0.r1``)."""
        state = self.state_dict() if not self.spec.replica else {"rng": self.rng.state_dict()}
        return {self.spec.key: save_shard(RunStore(store_uri), shard_path(folder, self.spec.key), state)}

    def load(self, store_uri: str, checkpoint: Checkpoint) -> None:
        """Load the part's shard of ``checkpoint`` (and a replica's own RNG state), each once it matches the size and
        digest that ``save`` returned."""
        store, key = RunStore(store_uri), self.spec.pid.key
        self.load_state_dict(load_shard(store, shard_path(checkpoint.folder, key), checkpoint.shards[key]))
        if self.spec.replica:
            own = self.spec.key
            self.rng.load_state_dict(
                load_shard(store, shard_path(checkpoint.folder, own), checkpoint.shards[own])["rng"]
            )

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.optimizer.load_state_dict(state["optimizers"][k])
        self.rng.load_state_dict(state["rng"])
        self.precision.load_state_dict(state.get("precision", {}))  # a checkpoint from before mixed precision

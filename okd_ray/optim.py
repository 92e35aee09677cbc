"""Optimizers from settings, and learning rates as a pure function of the epoch (resume needs no state)."""

from __future__ import annotations

import bisect
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from okd_ray.errors import did_you_mean
from okd_ray.precision import Precision
from okd_ray.settings import Strict

# Every torch.optim optimizer by its lower-case name, but those that cannot drive a whole network alone: L-BFGS steps
# with a closure that re-evaluates the loss, SparseAdam takes sparse gradients only, Muon 2-d parameters only.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    name.lower(): cls
    for name, cls in vars(torch.optim).items()
    if isinstance(cls, type)
    and issubclass(cls, torch.optim.Optimizer)
    and name not in ("Optimizer", "LBFGS", "SparseAdam", "Muon")
}


class OptimizerConfig(Strict):
    """An optimizer. ``weight_decay`` and ``betas`` go to every optimizer that takes them; ``momentum`` and
    ``nesterov`` to sgd, and to another that takes them where they are set; ``options`` holds any other keyword."""

    name: str = "sgd"  # any torch.optim optimizer by its lower-case name: sgd, adam, adamw, rmsprop, nadam, ...
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    # Multistep milestones of this optimizer, as a fraction of the schedule's (AFD's adversarial optimizers: 0.5).
    milestone_scale: float = Field(1.0, gt=0)
    # auto: fused kernels where the optimizer has them (sgd, adam, adamw, adagrad; 2.7x and 4.3x faster than the
    # for-loop for sgd and adam on ResNet-20 on this CPU), else torch's default (foreach on GPUs, for-loop on CPUs).
    # Either engine runs the same implementation on the same device, so they stay bit-identical.
    implementation: Literal["auto", "for-loop", "foreach", "fused"] = "auto"
    options: dict[str, Any] = {}  # the optimizer's other keywords, e.g. {eps: 1e-6, amsgrad: true}

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {name!r}; {did_you_mean(name, OPTIMIZERS)}choose one of "
                f"{', '.join(OPTIMIZERS)} (torch.optim's, by lower-case name)"
            )
        return name

    @model_validator(mode="after")
    def _takes(self) -> OptimizerConfig:
        takes = keywords(self.name)
        settable = [k for k in takes if k not in ("params", *OWN_KEYWORDS)]
        unknown = [k for k in self.options if k not in settable]
        if unknown:
            raise ValueError(
                f"options: torch.optim.{OPTIMIZERS[self.name].__name__} has no keyword "
                f"{', '.join(unknown)} that options may set (lr, momentum, nesterov, weight_decay, betas "
                f"and implementation are keys of their own); it takes: {', '.join(settable)}"
            )
        if self.implementation in ("foreach", "fused") and self.implementation not in takes:
            raise ValueError(
                f"implementation: torch.optim.{OPTIMIZERS[self.name].__name__} has no {self.implementation} "
                "implementation; use auto or for-loop"
            )
        return self

    def keywords(self) -> dict[str, Any]:
        """What the optimizer is constructed with, but for its parameters."""
        takes = keywords(self.name)
        chosen = {"lr": self.lr, "weight_decay": self.weight_decay, "betas": self.betas}
        if self.name == "sgd" or "momentum" in self.model_fields_set:
            chosen["momentum"] = self.momentum
        if self.name == "sgd" or "nesterov" in self.model_fields_set:
            chosen["nesterov"] = self.nesterov and self.momentum > 0
        implementation = {
            "for-loop": {"foreach": False},
            "foreach": {"foreach": True},
            "fused": {"fused": True},
            "auto": {"fused": True} if "fused" in takes else {},
        }[self.implementation]
        return {**{k: v for k, v in chosen.items() if k in takes}, **implementation, **self.options}


class ScheduleConfig(Strict):
    """Learning rate as a function of the epoch: recomputed each epoch, so resuming needs no scheduler state."""

    kind: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = []
    gamma: float = Field(0.1, gt=0)


OWN_KEYWORDS = ("lr", "momentum", "nesterov", "weight_decay", "betas", "foreach", "fused")


def keywords(name: str) -> list[str]:
    return list(inspect.signature(OPTIMIZERS[name].__init__).parameters)[1:]


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.name](list(params), **cfg.keywords())


def lr_factor(schedule: ScheduleConfig, epoch: int, epochs: int, milestone_scale: float = 1.0) -> float:
    """MultiStepLR's, cosine's or a constant factor at ``epoch``; ``milestone_scale`` moves the milestones."""
    if schedule.kind == "multistep":
        milestones = [m * milestone_scale for m in schedule.milestones]
        return schedule.gamma ** bisect.bisect_right(milestones, epoch)
    if schedule.kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return 1.0


def set_epoch_lr(
    optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, schedule: ScheduleConfig, epoch: int, epochs: int
) -> float:
    """Set ``optimizer``'s learning rate for ``epoch`` from its settings and the schedule; return it."""
    lr = cfg.lr * lr_factor(schedule, epoch, epochs, cfg.milestone_scale)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


class Stepper:
    """Every optimizer step of a part goes through here, a term's own too (AFD's discriminator): the gradients
    averaged over the part's replicas where it has several (``average``, set when the replicas join), then fp16's
    unscaling and overflow check, and the step."""

    def __init__(self, precision: Precision):
        self.precision = precision
        self.average: Callable[[list[torch.Tensor]], None] | None = None

    def backward(self, loss: torch.Tensor) -> None:
        """The backward of a loss of the part's own (scaled, with fp16)."""
        self.precision.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.average is not None:
            self.average([p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None])
        if optimizer.defaults.get("fused"):
            fused_layouts(optimizer)
        self.precision.step(optimizer)


def fused_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every gradient its parameter's strides. torch's fused kernels read a gradient as if it had them: on CPU
    a gradient of other strides (autograd.grad's of a conv weight, a compiled backward's, a channels_last parameter's
    from a contiguous one) is silently misread (torch 2.14.1, measured: SGD moved a weight by 0.5 where the for-loop
    moved it by 1e-4); on CUDA it is an error (pytorch#106951)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None and p.grad.stride() != p.stride():
                p.grad = torch.empty_like(p).copy_(p.grad)

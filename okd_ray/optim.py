"""Optimizers from settings, and learning rates as a pure function of the epoch (resume needs no state)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from pydantic import Field

from okd_ray.precision import Precision
from okd_ray.settings import Strict


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    # Multistep milestones of this optimizer, as a fraction of the schedule's (AFD's adversarial optimizers: 0.5).
    milestone_scale: float = Field(1.0, gt=0)


class ScheduleConfig(Strict):
    """Learning rate as a function of the epoch: recomputed each epoch, so resuming needs no scheduler state."""

    kind: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = []
    gamma: float = Field(0.1, gt=0)


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(schedule: ScheduleConfig, epoch: int, epochs: int, milestone_scale: float = 1.0) -> float:
    """MultiStepLR's, cosine's or a constant factor at ``epoch``; ``milestone_scale`` moves the milestones."""
    if schedule.kind == "multistep":
        milestones = [m * milestone_scale for m in schedule.milestones]
        return schedule.gamma ** bisect.bisect_right(milestones, epoch)
    if schedule.kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return 1.0


def set_epoch_lr(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, schedule: ScheduleConfig, epoch: int,
                 epochs: int) -> float:
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
        self.precision.step(optimizer)

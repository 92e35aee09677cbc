"""Optimizers from config, and learning rates as a pure function of the epoch (resume-safe)."""

import bisect
import math
from collections.abc import Iterable

import torch

from okd_ray.config import OptimizerConfig, ScheduleConfig


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


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor
    return base_lr * factor

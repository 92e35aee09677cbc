"""Synchronised batch norm across a part's replicas (``sync_batchnorm: true``), exact by construction.

In training, every batch-norm layer normalises with the statistics of the whole batch, all replicas' shares
together: each replica gathers every replica's share count, mean and sum of squared deviations, and merges them
in replica order (Chan et al.'s pairwise update), so every replica, in either engine, computes the very same
bits. The gradient flows back through the gather: each replica gathers every replica's gradient of the gathered
statistics and sums, in replica order, the parts that belong to its own. PyTorch's ``SyncBatchNorm`` all-reduces
instead, whose summation order is the backend's. Evaluation uses the running statistics, as plain batch norm.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .replicas import Gather


class GatheredStats(torch.autograd.Function):
    """Every replica's statistics (``gather``, in replica order), stacked; backward: this replica's share of the
    sum over replicas of their gradients, the replicas' summed in replica order."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, gather: Gather, replica: int) -> torch.Tensor:
        ctx.gather, ctx.replica = gather, replica
        return torch.stack(gather(local))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grads = ctx.gather(grad.contiguous())
        total = grads[0][ctx.replica]
        for other in grads[1:]:
            total = total + other[ctx.replica]
        return total, None, None


class SyncBatchNorm(_BatchNorm):
    """A batch-norm layer (of any dimension) whose training statistics are the replicas' together."""

    def __init__(self, layer: _BatchNorm, gather: Gather, replica: int):
        super().__init__(
            layer.num_features,
            layer.eps,
            layer.momentum,
            layer.affine,
            layer.track_running_stats,
            device=layer.weight.device if layer.affine else None,
        )
        self.gather, self.replica = gather, replica
        self.weight, self.bias = layer.weight, layer.bias  # the same parameters: the optimizer keeps stepping them
        self.running_mean, self.running_var = layer.running_mean, layer.running_var
        self.num_batches_tracked = layer.num_batches_tracked
        self.training = layer.training

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in float32 at least (bf16, fp16)
        count = x.numel() // x.size(1)
        mean = xf.mean(dims)
        m2 = (xf - mean.view(shape)).square().sum(dims)
        local = torch.cat([mean.new_full((1,), count), mean, m2])
        stats = GatheredStats.apply(local, self.gather, self.replica)  # D x (1 + 2C)
        counts, means, m2s = stats[:, 0], stats[:, 1 : 1 + x.size(1)], stats[:, 1 + x.size(1) :]
        n, total_mean, total_m2 = counts[0], means[0], m2s[0]
        for n_r, mean_r, m2_r in zip(counts[1:], means[1:], m2s[1:]):  # Chan et al.: replica r into 0..r-1
            merged = n + n_r
            delta = mean_r - total_mean
            total_mean = total_mean + delta * (n_r / merged)
            total_m2 = total_m2 + m2_r + delta.square() * (n * n_r / merged)
            n = merged
        var = total_m2 / n
        if self.track_running_stats and self.running_mean is not None:
            self._update_running(total_mean.detach(), (total_m2 / (n - 1)).detach())
        y = (xf - total_mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """As ``nn.BatchNorm``: an exponential average with ``momentum``, a cumulative one where it is None."""
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked  # no host read
        self.running_mean.mul_(1 - factor).add_(mean * factor)
        self.running_var.mul_(1 - factor).add_(unbiased_var * factor)


def synchronise_batchnorm(module: nn.Module, gather: Gather, replica: int) -> None:
    """Every batch-norm layer inside ``module`` synchronised over the replicas, in place; parameters and buffers
    are kept (the same objects), so optimizers and checkpoints are unchanged."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, SyncBatchNorm):
            setattr(module, name, SyncBatchNorm(child, gather, replica))
        else:
            synchronise_batchnorm(child, gather, replica)

"""The contract every network in a population keeps: forward returns (feature map, logits)."""

import torch
from torch import Tensor, nn

from okd_ray.errors import ModelError


class FeatureNet(nn.Module):
    """A classifier whose forward returns its last feature map with its logits.

    `forward(x) -> (f, z)`: `f` is the output of the last stage before global pooling
    (N x C x H x W) and `z` the logits (N x num_classes). Losses read `f` and `z`;
    they never reach into a network.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class PooledHeadNet(FeatureNet):
    """The in-house families: a stem, stages in order, a ``finish`` (identity or a last BN-ReLU) and a linear
    classifier ``fc`` on the globally average-pooled feature map. The stem and the first stages can be
    split off as a trunk that several members share (``trunk`` / ``branch``)."""

    stem: nn.Module
    stages: nn.ModuleList
    finish: nn.Module
    fc: nn.Linear

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        f = self.finish(x)
        return f, self.head(f)

    def split(self, stages: int) -> tuple[nn.Module, FeatureNet]:
        """(trunk: the stem and the first ``stages`` stages, branch: the rest with the head)."""
        if not 0 < stages < len(self.stages):
            raise ModelError(
                f"{type(self).__name__} has {len(self.stages)} stages; a trunk takes 1 to "
                f"{len(self.stages) - 1} of them (trunk_stages), not {stages}"
            )
        return nn.Sequential(self.stem, *self.stages[:stages]), Branch(self, stages)

    def head(self, f: Tensor) -> Tensor:
        """Logits from the feature map: global average pool, then the linear classifier."""
        return self.fc(f.mean((2, 3)))

    def init_weights(self) -> None:
        """He (fan-out) init for convolutions and BN at identity, as the CIFAR ResNet and WRN references."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class Branch(PooledHeadNet):
    """A member's own part of a net whose first stages live in a shared trunk: its input is the trunk's output."""

    def __init__(self, net: PooledHeadNet, first_stage: int):
        super().__init__()
        self.stem = nn.Identity()
        self.stages = nn.ModuleList(net.stages[first_stage:])
        self.finish, self.fc = net.finish, net.fc


def feature_shape(model: FeatureNet, in_channels: int, image_size: int) -> tuple[int, int, int]:
    """(C, H, W) of `model`'s feature map for square inputs of `image_size`, by a dry run.

    Runs a zero batch of 2 in eval mode without gradients, so BN statistics do not move;
    every submodule gets its own train/eval mode back afterwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    first = next(model.parameters(), None)
    x = torch.zeros(
        2,
        in_channels,
        image_size,
        image_size,
        device=first.device if first is not None else None,
        dtype=first.dtype if first is not None else None,
    )
    model.eval()
    try:
        with torch.no_grad():
            f, _ = model(x)
    except RuntimeError as err:
        raise ModelError(
            f"{type(model).__name__} does not accept {in_channels}-channel {image_size}x{image_size} images: {err}"
        ) from err
    finally:
        for m, training in modes:
            m.training = training
    if f.dim() != 4:
        raise ModelError(
            f"{type(model).__name__} returns a feature of shape {tuple(f.shape)}, not N x C x H x W; "
            "for a torchvision model pick a 4-D node with the `feature_node` option"
        )
    c, h, w = f.shape[1:]
    return c, h, w

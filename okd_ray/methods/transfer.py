"""Transfer layers: bring feature maps of different shapes to the ring's common shape."""

from torch import nn


def common_shape(shapes: list[tuple[int, int, int]], channels: int | None = None) -> tuple[int, int, int]:
    """The widest channel count (or ``channels``) at the smallest spatial size: maps only ever shrink."""
    c = channels or max(s[0] for s in shapes)
    return c, min(s[1] for s in shapes), min(s[2] for s in shapes)


def transfer_layer(shape: tuple[int, int, int], target: tuple[int, int, int]) -> nn.Module:
    """Identity when ``shape`` already is ``target``; else [adaptive pool] + 1×1 conv + BN + ReLU.

    The ReLU keeps the public map non-negative like the post-ReLU maps it is compared with.
    """
    if tuple(shape) == tuple(target):
        return nn.Identity()
    layers: list[nn.Module] = []
    if shape[1:] != target[1:]:
        layers.append(nn.AdaptiveAvgPool2d(target[1:]))
    layers += [nn.Conv2d(shape[0], target[0], 1, bias=False), nn.BatchNorm2d(target[0]), nn.ReLU()]
    return nn.Sequential(*layers)

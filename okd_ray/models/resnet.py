"""CIFAR ResNets (He et al. 2016): the 6n+2 family, as in RepDistiller's models/resnet.py."""

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from okd_ray.errors import ModelError
from okd_ray.models.base import PooledHeadNet


class BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CifarResNet(PooledHeadNet):
    """3x3 stem, three stages of (depth - 2) / 6 basic blocks, stride 2 at stages 2 and 3.

    `widths` are the stem's and the three stages' channels: (16, 16, 32, 64) for resnet8..110,
    (32, 64, 128, 256) for RepDistiller's x4 variants. The feature map is the last stage's
    output (after its final ReLU): 64 x 8 x 8 for resnet32 on 32x32 images.
    """

    def __init__(
        self,
        depth: int,
        widths: Sequence[int] = (16, 16, 32, 64),
        *,
        in_channels: int,
        num_classes: int,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ModelError(f"a CIFAR ResNet's depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), not {depth}")
        if len(widths) != 4:
            raise ModelError(f"a CIFAR ResNet takes 4 widths (stem and three stages), not {tuple(widths)}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        self.stages = nn.ModuleList(
            [
                _stage(widths[0], widths[1], n, stride=1),
                _stage(widths[1], widths[2], n, stride=2),
                _stage(widths[2], widths[3], n, stride=2),
            ]
        )
        self.finish = nn.Identity()
        self.fc = nn.Linear(widths[3], num_classes)

        self.init_weights()

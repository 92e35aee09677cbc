"""Wide ResNets (Zagoruyko & Komodakis 2016), as in RepDistiller's models/wrn.py."""

import torch.nn.functional as F
from torch import Tensor, nn

from okd_ray.errors import ModelError
from okd_ray.models.base import PooledHeadNet


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; a 1x1 conv shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        # As in the reference code, a projecting shortcut starts from the pre-activated input.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = F.relu(self.bn2(self.conv1(out)))
        out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


def _stage(in_planes: int, planes: int, blocks: int, stride: int, dropout: float) -> nn.Sequential:
    layers = [PreActBlock(in_planes, planes, stride, dropout)]
    layers += [PreActBlock(planes, planes, 1, dropout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class WideResNet(PooledHeadNet):
    """WRN-depth-width: a 3x3 stem of 16 channels, three stages of (depth - 4) / 6 blocks
    with 16w, 32w and 64w channels (stride 2 at stages 2 and 3), then BN-ReLU.

    The feature map is the output of that final BN-ReLU: 128 x 8 x 8 for WRN-16-2 on 32x32 images.
    """

    def __init__(
        self,
        depth: int,
        width: int,
        *,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ModelError(f"a Wide ResNet's depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), not {depth}")
        if width < 1:
            raise ModelError(f"a Wide ResNet's width must be a positive integer, not {width}")
        n = (depth - 4) // 6
        widths = (16, 16 * width, 32 * width, 64 * width)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.stages = nn.ModuleList(
            [
                _stage(widths[0], widths[1], n, 1, dropout),
                _stage(widths[1], widths[2], n, 2, dropout),
                _stage(widths[2], widths[3], n, 2, dropout),
            ]
        )
        self.finish = nn.Sequential(nn.BatchNorm2d(widths[3]), nn.ReLU())
        self.fc = nn.Linear(widths[3], num_classes)

        self.init_weights()
        nn.init.zeros_(self.fc.bias)  # as the WRN reference code

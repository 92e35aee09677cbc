"""A small three-conv CNN for tiny images (8x8 digits, 28x28 Fashion-MNIST): fast on a CPU."""

from torch import nn

from okd_ray.models.base import PooledHeadNet


def _conv_bn_relu(in_planes: int, planes: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(planes),
        nn.ReLU(inplace=True),
    )


class SmallCNN(PooledHeadNet):
    """conv(w) -> conv(2w, stride 2) -> conv(4w, stride 2), each with BN and ReLU.

    The feature map is the third conv's output: 4w x H/4 x W/4 (128 x 2 x 2 for width 32 on 8x8).
    """

    def __init__(self, width: int, *, in_channels: int, num_classes: int):
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, width, 1)
        self.stages = nn.ModuleList([_conv_bn_relu(width, 2 * width, 2), _conv_bn_relu(2 * width, 4 * width, 2)])
        self.finish = nn.Identity()
        self.fc = nn.Linear(4 * width, num_classes)

        self.init_weights()

"""Plain conv stacks that halve the input at their first conv: small-image studies that fit a CPU budget.

On a CPU a small CNN spends much of its time in its full-resolution layers, so these stacks open with
a stride-2 conv and work at half resolution and below. Each stage is `depth` 3x3 conv-BN-ReLU layers
at one width and opens at stride 2, so S stages shrink the image by 2^S (28 -> 14 -> 7 -> 4). Widths
are multiples of 16: at 1 thread a (24, 48) stack trained slower (37 ms a batch of 128) than a (16, 64)
one with more multiply-adds (25 ms).

The `fmnet` pair in the registry: `fmnet-s` (16, 48: a 48 x 7 x 7 map on 28x28 inputs) and `fmnet-l`,
the same two stages plus a third (96 x 4 x 4): maps that differ in channels and in size, AFD's
heterogeneous case. Trained alone on all 60k Fashion-MNIST images for 10 epochs (lr 0.1, cosine, no
augmentation) they reach about 91.0 % and 92.8 % test top-1 in about 12 and 18 CPU-seconds an epoch
(experiments/bench_small_models.py, results/small_models.parquet).
"""

from torch import nn

from okd_ray.errors import ModelError
from okd_ray.models.base import PooledHeadNet


class ConvStack(PooledHeadNet):
    """Stages of `depth` 3x3 conv-BN-ReLU layers at `width` channels, each stage opened at stride 2.

    `stages` is a sequence of (width, depth). The feature map is the last stage's output:
    width x ceil(H / 2^S) x ceil(W / 2^S) for S stages (48 x 7 x 7 for fmnet-s on 28x28).
    """

    def __init__(self, stages: tuple[tuple[int, int], ...], *, in_channels: int, num_classes: int):
        super().__init__()
        if not stages or any(width < 1 or depth < 1 for width, depth in stages):
            raise ModelError(f"ConvStack needs stages of (width >= 1, depth >= 1), got {stages!r}")
        blocks: list[nn.Module] = []
        planes = in_channels
        for width, depth in stages:
            layers: list[nn.Module] = []
            for i in range(depth):
                layers += [
                    nn.Conv2d(planes, width, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                planes = width
            blocks.append(nn.Sequential(*layers))
        self.stem = nn.Identity()  # the first stage opens at stride 2: there is no full-resolution stem
        self.stages = nn.ModuleList(blocks)
        self.finish = nn.Identity()
        self.fc = nn.Linear(planes, num_classes)

        self.init_weights()

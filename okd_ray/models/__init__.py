"""Model registry: a plain dict from name to builder, plus any torchvision classifier as `tv:NAME`.

Every model is a FeatureNet: `forward(x)` returns (last feature map before pooling, logits).
Builders take `in_channels` and `num_classes` as keywords and draw their initial weights from
torch's global RNG, so `torch.manual_seed(s)` before building gives identical weights.
"""

import inspect
from collections.abc import Callable
from functools import partial

from okd_ray.errors import ConfigError, ModelError, did_you_mean
from okd_ray.models.base import FeatureNet, feature_shape
from okd_ray.models.cnn import SmallCNN
from okd_ray.models.convstack import ConvStack
from okd_ray.models.resnet import CifarResNet
from okd_ray.models.wrn import WideResNet
from okd_ray.registry import register

__all__ = ["MODELS", "FeatureNet", "build_model", "feature_shape", "register_model", "unknown_model"]

TORCHVISION_PREFIX = "tv:"

MODELS: dict[str, Callable[..., FeatureNet]] = {
    # CIFAR ResNets (stem and stage widths default to 16, 16, 32, 64)
    "resnet8": partial(CifarResNet, depth=8),
    "resnet14": partial(CifarResNet, depth=14),
    "resnet20": partial(CifarResNet, depth=20),
    "resnet32": partial(CifarResNet, depth=32),
    "resnet44": partial(CifarResNet, depth=44),
    "resnet56": partial(CifarResNet, depth=56),
    "resnet110": partial(CifarResNet, depth=110),
    "resnet8x4": partial(CifarResNet, depth=8, widths=(32, 64, 128, 256)),
    "resnet32x4": partial(CifarResNet, depth=32, widths=(32, 64, 128, 256)),
    # Wide ResNets: wrn-depth-width
    "wrn-16-1": partial(WideResNet, depth=16, width=1),
    "wrn-16-2": partial(WideResNet, depth=16, width=2),
    "wrn-16-4": partial(WideResNet, depth=16, width=4),
    "wrn-16-8": partial(WideResNet, depth=16, width=8),
    "wrn-28-4": partial(WideResNet, depth=28, width=4),
    "wrn-28-10": partial(WideResNet, depth=28, width=10),
    "wrn-40-1": partial(WideResNet, depth=40, width=1),
    "wrn-40-2": partial(WideResNet, depth=40, width=2),
    "wrn-40-4": partial(WideResNet, depth=40, width=4),
    # Small CNNs for tiny images: cnnW has widths W, 2W, 4W
    "cnn16": partial(SmallCNN, width=16),
    "cnn32": partial(SmallCNN, width=32),
    "cnn64": partial(SmallCNN, width=64),
    # A small/large pair for CPU studies on 28x28 images: stride-2 stems, (width, depth) per stage;
    # fmnet-l is fmnet-s plus a third stage (48 x 7 x 7 and 96 x 4 x 4 maps on Fashion-MNIST)
    "fmnet-s": partial(ConvStack, stages=((16, 2), (48, 2))),
    "fmnet-l": partial(ConvStack, stages=((16, 2), (48, 2), (96, 2))),
}


def register_model(name: str, builder: Callable[..., FeatureNet]) -> Callable[..., FeatureNet]:
    """Make ``builder`` known as ``members.N.arch: name`` (from a plugin). It takes ``in_channels`` and
    ``num_classes`` as keywords and returns a FeatureNet. A name stands for one builder only; registering the
    same one again (a plugin imported twice) is harmless."""
    if name.startswith(TORCHVISION_PREFIX):
        raise ConfigError(
            f"model {name!r}: the prefix {TORCHVISION_PREFIX} names torchvision's models; choose another name"
        )
    return register(MODELS, "model", name, builder)


def unknown_model(name: str) -> str:
    """What to say of a model name that is neither registered nor torchvision's."""
    return (
        f"unknown model {name!r}; {did_you_mean(name, MODELS)}choose one of {', '.join(MODELS)}, "
        f"or any torchvision classification model as {TORCHVISION_PREFIX}NAME "
        "(e.g. tv:resnet18, tv:mobilenet_v3_small, tv:densenet121; "
        "torchvision.models.list_models(module=torchvision.models) lists them)"
    )


def build_model(name: str, *, in_channels: int, num_classes: int, **kwargs) -> FeatureNet:
    """Build a model from MODELS, or torchvision's NAME for `tv:NAME`.

    `kwargs` go to the builder: e.g. `dropout` for Wide ResNets; `feature_node`, `logits_node`
    and torchvision's own options for `tv:` models.
    """
    for key, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelError(f"`{key}` must be a positive integer, not {value!r}")
    if name.startswith(TORCHVISION_PREFIX):
        from okd_ray.models.tv import torchvision_model  # torchvision costs a second to import: only when used

        return torchvision_model(
            name.removeprefix(TORCHVISION_PREFIX), in_channels=in_channels, num_classes=num_classes, **kwargs
        )
    if name not in MODELS:
        raise ModelError(unknown_model(name))
    builder = MODELS[name]
    try:
        inspect.signature(builder).bind(in_channels=in_channels, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ModelError(f"model {name!r} does not take {sorted(kwargs)}: {err}") from err
    return builder(in_channels=in_channels, num_classes=num_classes, **kwargs)

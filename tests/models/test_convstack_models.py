"""The fmnet pair (ConvStack): feature maps of different channels and sizes, cheap enough for CPU studies."""

import pytest
import torch

from okd_ray.errors import ModelError
from okd_ray.models import MODELS, FeatureNet, build_model
from okd_ray.models.convstack import ConvStack

PAIR = ("fmnet-s", "fmnet-l")


def _run(name: str, in_channels: int, size: int, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(name, in_channels=in_channels, num_classes=num_classes)
    model.eval()
    with torch.no_grad():
        f, z = model(torch.randn(3, in_channels, size, size))
        # f is the pre-pooling map: the head alone turns it into the logits.
        torch.testing.assert_close(model.head(f), z)
    return f, z


def test_registered_as_feature_nets():
    assert set(PAIR) <= set(MODELS)
    for name in PAIR:
        model = build_model(name, in_channels=1, num_classes=10)
        assert isinstance(model, ConvStack) and isinstance(model, FeatureNet)


@pytest.mark.parametrize(
    ("name", "in_channels", "size", "shape"),
    [
        ("fmnet-s", 1, 28, (48, 7, 7)),  # Fashion-MNIST
        ("fmnet-l", 1, 28, (96, 4, 4)),
        ("fmnet-s", 1, 8, (48, 2, 2)),  # digits
        ("fmnet-l", 1, 8, (96, 1, 1)),
        ("fmnet-s", 3, 32, (48, 8, 8)),  # CIFAR
        ("fmnet-l", 3, 32, (96, 4, 4)),
    ],
)
def test_feature_map_and_logit_shapes(name, in_channels, size, shape):
    f, z = _run(name, in_channels, size)
    assert f.shape == (3, *shape)
    assert z.shape == (3, 10)
    assert f.min() >= 0  # after the last ReLU


def test_the_pair_is_heterogeneous_on_fashion_mnist():
    (fs, _), (fl, _) = _run("fmnet-s", 1, 28), _run("fmnet-l", 1, 28)
    assert fs.shape[1] != fl.shape[1] and fs.shape[2:] != fl.shape[2:]


# Counted by hand: convs 1-16, 16-16, 16-48, 48-48 (+ 48-96, 96-96 for fmnet-l), BN scale and shift, fc.
@pytest.mark.parametrize(("name", "count"), [("fmnet-s", 30_842), ("fmnet-l", 156_122)])
def test_parameter_counts(name, count):
    model = build_model(name, in_channels=1, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == count


def test_large_member_is_the_small_one_plus_a_stage():
    small = build_model("fmnet-s", in_channels=1, num_classes=10)
    large = build_model("fmnet-l", in_channels=1, num_classes=10)
    shapes = [p.shape for p in large.stages.parameters()]
    assert shapes[: len(list(small.stages.parameters()))] == [p.shape for p in small.stages.parameters()]
    assert len(large.stages) == len(small.stages) + 1


def test_bad_stages_are_model_errors():
    with pytest.raises(ModelError, match="stages"):
        ConvStack((), in_channels=1, num_classes=10)
    with pytest.raises(ModelError, match="stages"):
        ConvStack(((16, 0),), in_channels=1, num_classes=10)

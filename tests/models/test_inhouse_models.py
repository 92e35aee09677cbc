"""The in-house families (CIFAR ResNets, Wide ResNets, small CNNs) keep the FeatureNet contract."""

import pytest
import torch

from okd_ray.errors import ModelError
from okd_ray.models import MODELS, build_model
from okd_ray.models.resnet import CifarResNet
from okd_ray.models.wrn import WideResNet

# Too slow for the 8x8 sweep on a 2-core CPU; they are built on 32x32 and counted below.
BIG = {"wrn-28-10", "resnet110"}


def _check(name: str, in_channels: int, size: int, num_classes: int) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(name, in_channels=in_channels, num_classes=num_classes)
    model.eval()
    with torch.no_grad():
        f, z = model(torch.randn(2, in_channels, size, size))
        assert z.shape == (2, num_classes)
        assert f.dim() == 4 and f.shape[0] == 2
        # f is the pre-pooling map: the head alone turns it into the logits.
        torch.testing.assert_close(model.head(f), z)
    return f


@pytest.mark.parametrize("name", sorted(set(MODELS) - BIG))
def test_cifar_and_tiny_inputs(name):
    _check(name, in_channels=3, size=32, num_classes=100)
    _check(name, in_channels=1, size=8, num_classes=10)


@pytest.mark.parametrize("name", sorted(BIG))
def test_big_models_on_cifar(name):
    _check(name, in_channels=3, size=32, num_classes=100)


@pytest.mark.parametrize(
    ("name", "in_channels", "size", "shape"),
    [
        ("resnet32", 3, 32, (64, 8, 8)),
        ("resnet8x4", 3, 32, (256, 8, 8)),
        ("wrn-16-2", 3, 32, (128, 8, 8)),
        ("cnn32", 1, 8, (128, 2, 2)),
        ("cnn16", 1, 28, (64, 7, 7)),
    ],
)
def test_feature_map_shape(name, in_channels, size, shape):
    assert _check(name, in_channels, size, num_classes=10).shape[1:] == shape


def test_feature_is_after_the_final_relu():
    for name in ("resnet20", "wrn-16-1", "cnn16"):
        assert _check(name, 3, 32, 10).min() >= 0


# Published sizes: CIFAR-100 models from the CRD paper (Tian et al. 2020, RepDistiller's code),
# CIFAR-10 Wide ResNets from Zagoruyko & Komodakis (2016).
@pytest.mark.parametrize(
    ("name", "num_classes", "millions"),
    [
        ("resnet32", 100, 0.47),
        ("resnet56", 100, 0.86),
        ("resnet110", 100, 1.73),
        ("resnet8x4", 100, 1.23),
        ("resnet32x4", 100, 7.43),
        ("wrn-16-2", 100, 0.70),
        ("wrn-40-1", 100, 0.57),
        ("wrn-40-2", 100, 2.25),
        ("wrn-40-2", 10, 2.2),
        ("wrn-40-4", 10, 8.9),
        ("wrn-16-8", 10, 11.0),
        ("wrn-28-10", 10, 36.5),
    ],
)
def test_parameter_counts_match_the_papers(name, num_classes, millions):
    model = build_model(name, in_channels=3, num_classes=num_classes)
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(millions * 1e6, rel=0.03)


def test_wrn_dropout_is_an_option():
    model = build_model("wrn-16-1", in_channels=3, num_classes=10, dropout=0.3)
    assert all(block.dropout == 0.3 for stage in model.stages for block in stage)


def test_bad_depths_are_model_errors():
    with pytest.raises(ModelError, match="6n\\+2"):
        CifarResNet(depth=10, in_channels=3, num_classes=10)
    with pytest.raises(ModelError, match="6n\\+4"):
        WideResNet(depth=18, width=2, in_channels=3, num_classes=10)


@pytest.mark.parametrize("name, stages", [("resnet8", 2), ("wrn-16-1", 1), ("cnn16", 1), ("fmnet-l", 2)])
def test_a_split_net_computes_what_the_whole_net_computes(name, stages):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=10).eval()
    trunk, branch = model.split(stages)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f, z = model(x)
        f_split, z_split = branch(trunk(x))
    assert torch.equal(f, f_split) and torch.equal(z, z_split)
    with pytest.raises(ModelError, match="trunk takes 1 to"):
        model.split(len(model.stages))

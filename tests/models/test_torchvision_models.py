"""torchvision classifiers join a population through FX feature extraction (tv:NAME)."""

import pytest
import torch
from torch import nn

from okd_ray.errors import ModelError
from okd_ray.models import build_model, feature_shape
from okd_ray.models.tv import TorchvisionNet


@pytest.mark.parametrize(
    ("name", "node", "shape"),
    [
        ("resnet18", "layer4", (512, 1, 1)),
        ("mobilenet_v3_small", "features", (576, 1, 1)),
        ("densenet121", "relu", (1024, 1, 1)),
    ],
)
def test_one_channel_inputs_give_a_connected_feature(name, node, shape):
    model = build_model(f"tv:{name}", in_channels=1, num_classes=10)
    assert model.feature_node == node
    assert feature_shape(model, in_channels=1, image_size=32) == shape

    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.in_channels == 1
    f, z = model(torch.randn(4, 1, 32, 32))
    assert f.shape == (4, *shape) and z.shape == (4, 10)
    # A loss on f alone must train the stem: f is part of the graph, not a side branch.
    f.square().mean().backward()
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0


def test_feature_is_the_pooling_input():
    model = build_model("tv:resnet18", in_channels=3, num_classes=7).eval()
    with torch.no_grad():
        f, z = model(torch.randn(2, 3, 32, 32))
        torch.testing.assert_close(model.body.fc(f.mean((2, 3))), z)


def test_other_channel_counts_reuse_the_models_own_stem_weights():
    torch.manual_seed(0)
    rgb = build_model("tv:resnet18", in_channels=3, num_classes=10)
    torch.manual_seed(0)
    gray = build_model("tv:resnet18", in_channels=1, num_classes=10)
    torch.manual_seed(0)
    five = build_model("tv:resnet18", in_channels=5, num_classes=10)
    w = rgb.body.conv1.weight
    torch.testing.assert_close(gray.body.conv1.weight, w.sum(1, keepdim=True))
    assert five.body.conv1.weight.shape == (64, 5, 7, 7)
    assert (five.body.conv1.stride, five.body.conv1.padding) == (rgb.body.conv1.stride, rgb.body.conv1.padding)
    assert feature_shape(five, in_channels=5, image_size=32) == (512, 1, 1)


def test_feature_node_override():
    model = build_model("tv:resnet18", in_channels=3, num_classes=10, feature_node="layer3")
    assert feature_shape(model, in_channels=3, image_size=32) == (256, 2, 2)


def test_torchvision_options_pass_through():
    model = build_model("tv:mobilenet_v3_small", in_channels=3, num_classes=10, width_mult=0.5)
    assert feature_shape(model, 3, 32)[0] < 576
    with pytest.raises(ModelError, match="resnet18"):
        build_model("tv:resnet18", in_channels=3, num_classes=10, no_such_option=1)


def test_unknown_torchvision_name():
    with pytest.raises(ModelError, match="did you mean resnet18") as err:
        build_model("tv:resnet19", in_channels=3, num_classes=10)
    assert "mobilenet_v3_small" in str(err.value)
    with pytest.raises(ModelError, match="classification"):
        build_model("tv:fasterrcnn_resnet50_fpn", in_channels=3, num_classes=10)


class _NoPool(nn.Module):
    """Flattens its feature map straight into the classifier: nothing marks where features end."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def test_a_model_without_pooling_asks_for_feature_node():
    with pytest.raises(ModelError, match="`feature_node`"):
        TorchvisionNet(_NoPool())
    model = TorchvisionNet(_NoPool(), feature_node="relu")
    assert feature_shape(model, 3, 8) == (4, 8, 8)
    with pytest.raises(ModelError, match="`feature_node`='nope' is not a node"):
        TorchvisionNet(_NoPool(), feature_node="nope")
    # A node that is not a map is caught by the dry run.
    with pytest.raises(ModelError, match="feature_node"):
        feature_shape(TorchvisionNet(_NoPool(), feature_node="flatten"), 3, 8)


def test_vision_transformer_asks_for_feature_node():
    with pytest.raises(ModelError, match="`feature_node`"):
        build_model("tv:vit_b_32", in_channels=3, num_classes=10)

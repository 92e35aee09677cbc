"""build_model, feature_shape and the registry's errors and determinism."""

import pytest
import torch
from torch import nn

from okd_ray.errors import ModelError
from okd_ray.models import MODELS, FeatureNet, build_model, feature_shape


def test_registry_is_a_plain_dict_of_builders():
    assert type(MODELS) is dict
    assert {"resnet32", "resnet8x4", "wrn-40-2", "cnn32"} <= set(MODELS)
    assert isinstance(MODELS["cnn16"](in_channels=1, num_classes=10), FeatureNet)


@pytest.mark.parametrize("name", ["cnn32", "resnet8", "wrn-16-1", "tv:resnet18"])
def test_same_seed_same_weights(name):
    def weights(seed):
        torch.manual_seed(seed)
        return build_model(name, in_channels=1, num_classes=10).state_dict()

    a, b, c = weights(1), weights(1), weights(2)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", ["resnet8", "tv:mobilenet_v3_small"])
def test_feature_shape_leaves_modes_and_bn_statistics_alone(name):
    model = build_model(name, in_channels=3, num_classes=10)
    model.train()
    frozen = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    frozen.eval()  # a submodule in its own mode must keep it
    before = {k: v.clone() for k, v in model.state_dict().items()}

    assert feature_shape(model, in_channels=3, image_size=32)[0] == (64 if name == "resnet8" else 576)

    assert model.training and not frozen.training
    assert all(m.training for m in model.modules() if m is not frozen and isinstance(m, nn.BatchNorm2d))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_feature_shape_reports_inputs_a_model_cannot_take():
    model = build_model("tv:alexnet", in_channels=1, num_classes=10)
    with pytest.raises(ModelError, match="1-channel 8x8"):
        feature_shape(model, in_channels=1, image_size=8)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ModelError) as err:
        build_model("resnet33", in_channels=3, num_classes=10)
    message = str(err.value)
    assert "did you mean" in message
    assert all(name in message for name in MODELS)
    assert "tv:NAME" in message and "tv:resnet18" in message


def test_bad_options_are_model_errors():
    with pytest.raises(ModelError, match="dropout"):
        build_model("resnet32", in_channels=3, num_classes=10, dropout=0.1)
    with pytest.raises(ModelError, match="num_classes"):
        build_model("resnet32", in_channels=3, num_classes=0)
    with pytest.raises(ModelError, match="in_channels"):
        build_model("cnn16", in_channels=1.5, num_classes=10)


PLUGIN = """
from functools import partial

from okd_ray.models import register_model
from okd_ray.models.cnn import SmallCNN

register_model("tinycnn", partial(SmallCNN, width=8))
"""


def test_a_plugin_model_joins_a_population_and_names_are_checked_with_it(tmp_path, okd_ray):
    import pyarrow.parquet as pq

    plugin = tmp_path / "my_models.py"
    plugin.write_text(PLUGIN)
    tiny = [f"plugins=[{plugin}]", "epochs=1", "data.train_limit=64", "data.test_limit=32", "data.batch_size=32"]
    result = okd_ray.run("train", *tiny, "members.1.arch=tinycnn", "--run-dir", tmp_path / "run", "--quiet")
    assert result.returncode == 0, result.stderr
    assert {r["arch"] for r in pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()} >= {"cnn16", "tinycnn"}
    okd_ray.assert_error(
        okd_ray.run("train", *tiny, "members.1.arch=tinycn", "--quiet"),
        2,
        "members.1.arch: unknown model 'tinycn'; did you mean tinycnn?",
        "tinycnn, or any torchvision",
    )


def test_a_model_name_stands_for_one_builder():
    from functools import partial

    from okd_ray.errors import ConfigError
    from okd_ray.models import register_model
    from okd_ray.models.resnet import CifarResNet

    register_model("resnet8", partial(CifarResNet, depth=8))  # the same builder again (a plugin imported twice)
    with pytest.raises(
        ConfigError,
        match=r"model 'resnet8' is okd-ray's built-in model "
        r"\(okd_ray\.models\.resnet\.CifarResNet\(\*\(\), \*\*\{'depth': 8\}\)\)",
    ):
        register_model("resnet8", partial(CifarResNet, depth=14))
    with pytest.raises(ConfigError, match="model 'tv:mine': the prefix tv: names torchvision's models"):
        register_model("tv:mine", partial(CifarResNet, depth=8))
    assert build_model("resnet8", in_channels=1, num_classes=10).stages  # still depth 8's builder

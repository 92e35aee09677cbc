"""Config loading, overrides and the errors that name the key."""

from pathlib import Path

import pytest

from okd_ray.config import dump_config, load_config, parse_config
from okd_ray.errors import ConfigError


def test_embedded_default_is_digits_afd_with_two_members():
    config = load_config()
    assert (config.data.name, config.method.name, len(config.members)) == ("digits", "afd", 2)


def test_overrides_reach_nested_keys_and_list_items():
    config = load_config(None, ["method.afd.adv_weight=0.5", "members.1.arch=resnet8", "data.train_limit=10"])
    assert config.method.afd.adv_weight == 0.5
    assert config.members[1].arch == "resnet8"
    assert config.data.train_limit == 10


def test_dumped_config_round_trips():
    config = load_config(None, ["method.name=ffl", "epochs=3"])
    assert parse_config(dump_config(config)) == config


@pytest.mark.parametrize(
    "override, expected",
    [
        ("method.afd.adv_wieght=1", "method.afd.adv_wieght: unknown key; valid keys here: adv_weight"),
        ("epochs=0", "epochs: Input should be greater than or equal to 1"),
        ("method.name=kd", "unknown method 'kd'; valid: vanilla, dml, l1, l2, afd, ffl, afd+ffl"),
        ("members.5.arch=x", "members has 2 items"),
        ("nonsense", "is not key=value"),
        ("members=[{arch: cnn16}]", "needs at least 2 members, got 1; add members or use method.name=vanilla"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, [override])
    assert expected in str(err.value)


def test_ffl_with_one_member_is_refused():
    with pytest.raises(ConfigError, match="method 'ffl' needs at least 2 members"):
        load_config(None, ["method.name=ffl", "members=[{arch: cnn16}]"])


SHIPPED = sorted((Path(__file__).parents[1] / "experiments" / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_are_valid(path):
    config = load_config(path)
    assert config.members and config.method.name in path.read_text()


def test_fashion_mnist_set_differs_only_in_the_method():
    configs = [load_config(p) for p in SHIPPED if p.parent.name == "fashion-mnist"]
    assert sorted(c.method.name for c in configs) == sorted(["vanilla", "dml", "l1", "l2", "afd", "ffl", "afd+ffl"])
    stripped = {c.model_copy(update={"name": "", "method": c.method.model_copy(update={"name": "afd"})}).model_dump_json()
                for c in configs}
    assert len(stripped) == 1

"""Config loading, overrides and the errors that name the key."""

from pathlib import Path

import pytest

from okd_ray.config import apply_overrides, dump_config, load_config, load_yaml, parse_config, read_raw
from okd_ray.errors import ConfigError, DataError
from okd_ray.optim import OptimizerConfig
from okd_ray.population import plan_population
from okd_ray.tune import parse_space


def test_embedded_default_is_digits_afd_with_two_members():
    config = load_config()
    assert (config.data.name, config.method.name, len(config.members)) == ("digits", "afd", 2)


def test_overrides_reach_nested_keys_and_list_items():
    config = load_config(None, ["method.terms.adversarial.weight=0.5", "members.1.arch=resnet8", "data.train_limit=10"])
    assert config.method.settings("adversarial").weight == 0.5
    assert config.members[1].arch == "resnet8"
    assert config.data.train_limit == 10


def test_a_member_given_by_its_architecture_alone_takes_the_default_optimizer():
    config = load_config(None, ["members=[cnn16, cnn32, {arch: resnet8, optimizer: {lr: 0.05}}]"])
    assert [m.arch for m in config.members] == ["cnn16", "cnn32", "resnet8"]
    assert config.members[0].optimizer == OptimizerConfig() and config.members[2].optimizer.lr == 0.05


def test_dumped_config_round_trips():
    config = load_config(None, ["method.name=ffl", "epochs=3"])
    assert parse_config(dump_config(config)) == config


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "method.terms.adversarial.wieght=1",
            "method.terms.adversarial.wieght: unknown key; did you mean weight? valid keys here: weight, "
            "discriminator_optimizer",
        ),
        ("method.terms.ring_kl.temperature=0", "method.terms.ring_kl.temperature: Input should be greater than 0"),
        (
            "method.terms.ring_kll.weight=2",
            "method.terms.ring_kll: unknown term; did you mean ring_kl? the terms of afd",
        ),
        ("method.terms.peer_kl.weight=-1", "method.terms.peer_kl.weight: Input should be greater than or equal to 0"),
        ("epoch=3", "epoch: unknown key; did you mean epochs? valid keys here: name, seed, epochs"),
        ("epochs=0", "epochs: Input should be greater than or equal to 1"),
        ("method.name=kd", "method.name: unknown method 'kd'; did you mean kdcl? valid: vanilla, dml"),
        ("members.5.arch=x", "members has 2 items"),
        ("nonsense", "is not key=value"),
        (
            "members=[{arch: cnn16}]",
            "members: method 'afd' needs at least 2 members, got 1; add members or use method.name=vanilla",
        ),
        ("method.name=one", "trunk_stages: method 'one' gates branches on a shared trunk; set trunk_stages"),
        ("trunk_stages=2", "trunk_stages: members sharing a trunk must have one architecture"),
        ("search={method.kl_weight: {uniform: [0, 1]}}", "the search space is no override; put it in the config's"),
        ("search.method.kl_weight=1", "give okd-ray tune --space FILE"),
        ("members=[{arch: cnn16", "the value of override 'members=[{arch: cnn16', line 1, column 14: YAML syntax"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, [override])
    assert expected in str(err.value)


def test_per_member_augmentation_without_an_augmentation_is_refused():
    with pytest.raises(ConfigError, match="data.augment_per_member: with data.augment=false there is no augmentation"):
        load_config(None, ["data.augment=false", "data.augment_per_member=true"])
    with pytest.raises(DataError, match="data.augment_per_member: digits has no augmentation to draw per member"):
        plan_population(load_config(None, ["data.augment_per_member=true"]))


def test_ffl_with_one_member_is_refused():
    with pytest.raises(ConfigError, match="method 'ffl' needs at least 2 members"):
        load_config(None, ["method.name=ffl", "members=[{arch: cnn16}]"])


def test_a_methods_row_gives_the_defaults_and_other_terms_are_checked_but_left_out():
    dml = load_config(None, ["method.name=dml"])
    assert dml.method.settings("peer_kl").temperature == 1.0  # DML's row; AFD's ring_kl defaults to 3
    assert set(dml.method.terms) == {"ce", "peer_kl"}  # the default file's adversarial settings are left out
    assert load_config(None, []).method.settings("adversarial").discriminator_optimizer.lr == 2e-4
    with pytest.raises(ConfigError, match="method.terms.fused_kl.rampup_epochs"):
        load_config(None, ["method.name=dml", "method.terms.fused_kl.rampup_epochs=-1"])


CONFIGS = Path(__file__).parents[1] / "experiments" / "configs"
SPACES = sorted((CONFIGS / "fashion-mnist-search").glob("*.yaml"))  # search spaces, one per method
SHIPPED = sorted(set(CONFIGS.rglob("*.yaml")) - set(SPACES))


def test_an_unknown_data_set_is_named_with_the_closest_ones():
    # "digits" first; a plugin's data set registered earlier in the same process may follow it
    with pytest.raises(
        ConfigError, match=r"data.name: unknown data set 'digit'; did you mean digits[,?].*choose one of"
    ):
        load_config(None, ["data.name=digit"])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_are_valid(path):
    config = load_config(path)
    assert config.members and config.method.name in path.read_text()


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_the_tuned_studys_search_spaces_are_valid_for_their_methods(path):
    """Every key and bound checked as okd-ray tune checks them, weights that would not act refused."""
    raw = apply_overrides(read_raw(CONFIGS / "fashion-mnist.yaml"), [f"method.name={path.stem}"])
    assert parse_space(load_yaml(path.read_text(), str(path))["search"], raw)


def test_the_fashion_mnist_config_serves_every_method_of_the_study():
    """One file for all methods (experiments/study_fashion_mnist.py): each method validates on it."""
    path = Path(__file__).parents[1] / "experiments" / "configs" / "fashion-mnist.yaml"
    methods = ["vanilla", "dml", "kdcl", "l1", "afd", "ffl", "afd+ffl"]
    configs = [load_config(path, [f"method.name={m}"]) for m in methods]
    assert [c.method.name for c in configs] == methods


def test_name_defaults_to_what_runs_and_an_explicit_name_is_kept():
    assert load_config(None, ["method.name=ffl"]).run_name == "digits-ffl"
    assert load_config(None, ["method.name=ffl", "data.name=fashion-mnist"]).run_name == "fashion-mnist-ffl"
    assert load_config(None, ["name=mine", "method.name=ffl"]).run_name == "mine"


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 2\nmembers: [{arch: cnn16}\ndata: {name: digits}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}, line 3, column 1: YAML syntax error" in str(err.value)
    assert "flow sequence from line 2, column 10" in str(err.value)


def test_a_key_below_a_member_given_by_its_arch_alone_says_how_to_write_it():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["members=[cnn16, cnn32]", "members.0.optimizer.lr=0.05"])
    assert str(err.value) == (
        "members.0.optimizer.lr: members.0 is 'cnn16', which has no keys; write it as a mapping "
        "first, e.g. members.0={arch: cnn16}"
    )
    assert (
        load_config(None, ["members=[cnn16, cnn32]", "members.0={arch: cnn16}", "members.0.optimizer.lr=0.05"])
        .members[0]
        .optimizer.lr
        == 0.05
    )


SHIPPED = sorted(
    p
    for p in (Path(__file__).parents[1] / "experiments" / "configs").rglob("*.yaml")
    if p.parent.name != "fashion-mnist-search"
)  # those are search spaces, read by the study


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_shipped_config_is_valid(path):
    load_config(str(path), [])

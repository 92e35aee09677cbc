"""A user's own method and data set, defined in a file outside okd-ray, under both engines and okd-ray tune."""

import os
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from okd_ray.cli import main
from okd_ray.config import load_config, read_raw
from okd_ray.errors import ConfigError
from okd_ray.population import plan_population
from okd_ray.run import train

PLUGIN = '''
import os
from dataclasses import replace
from pathlib import Path

import torch
from pydantic import Field, model_validator
from torch import nn

from okd_ray.data import DataInfo, digits, register_dataset
from okd_ray.data.tensor_dataset import TensorDataset
from okd_ray.methods import CrossEntropy, Need, Term, TermSettings, register_method
from okd_ray.models import register_model
from okd_ray.models.base import FeatureNet


class PeerMSE(Term):
    """Squared distance to every peer's logits, scaled."""

    name = "peer_mse"
    needs = frozenset({Need.PEER_LOGITS})

    class Settings(TermSettings):
        scale: float = Field(0.5, gt=0)

        @model_validator(mode="after")
        def _noted(self):
            """Which processes validate which settings (the test reads it)."""
            with open(Path(__file__).with_suffix(".validated"), "a") as f:
                f.write(f"{os.getpid()}:{self.weight}\\n")
            return self

    def loss(self, batch):
        peers = torch.stack(list(batch.peer_logits.values()))
        return self.settings.scale * (batch.logits - peers).pow(2).mean()


register_method("mse-peers", [CrossEntropy, PeerMSE.configured(scale=0.25)])


def pairs_of_digits(config, seed):
    """The digits in five classes: 0-1, 2-3, ...; the builder gets the whole data section and the seed."""
    d = digits.load()
    return TensorDataset(replace(d, info=DataInfo("digit-pairs", 1, 5, 8), train_labels=d.train_labels // 2,
                                 test_labels=d.test_labels // 2), config, seed)


register_dataset("digit-pairs", pairs_of_digits)


class TwoConv(FeatureNet):
    """A user's own network: two convolutions; forward gives its last feature map and its logits."""

    def __init__(self, *, in_channels, num_classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 24, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(24, 48, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x):
        feature = self.features(x)
        return feature, self.fc(feature.mean((2, 3)))


register_model("two-conv", TwoConv)
'''
TINY = ["epochs=1", "data.train_limit=64", "data.test_limit=64", "data.batch_size=32", "threads=1"]


@pytest.fixture(scope="module")
def plugin(plugin_file):
    return plugin_file("my_method.py", PLUGIN)


def test_a_plugin_method_model_and_data_set_run_under_both_engines_with_the_same_result(
    on_ray, plugin, tmp_path, population_state
):
    overrides = [
        f"plugins=[{plugin}]",
        "method.name=mse-peers",
        "method.terms.peer_mse.weight=2",
        "data.name=digit-pairs",
        "members.1.arch=two-conv",
        *TINY,
        f"output_dir={tmp_path}",
    ]
    config = load_config(None, overrides)
    assert config.method.settings("peer_mse").scale == 0.25  # the row's default
    local = train(config, run_dir=str(tmp_path / "local"), quiet=True)
    validated = plugin.with_suffix(".validated")
    validated.unlink(missing_ok=True)
    remote = train(load_config(None, [*overrides, *on_ray]), run_dir=str(tmp_path / "ray"), quiet=True)
    # each part is built from the spec the plan made: no actor validates the config or its terms' settings again
    # (an actor importing the plugin validates the row's defaults, weight 1, as any import does)
    assert {line for line in validated.read_text().split() if not line.endswith(":1.0")} == {f"{os.getpid()}:2.0"}
    table = pq.read_table(tmp_path / "local" / "metrics.parquet").to_pylist()
    assert all(r["peer_mse"] > 0 for r in table if r["kind"] == "member")  # its column, with no list edited
    assert all(r["test_top5"] == 100 for r in table)  # the plugin's data set: five classes
    assert {r["part"] for r in table} >= {"m1:two-conv"}  # the plugin's model
    assert any(k.startswith("m1.modules.net.features.2.") for k in population_state(local.run_dir))
    a, b = population_state(local.run_dir), population_state(remote.run_dir)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


SHIPPED = Path(__file__).parents[1] / "experiments" / "plugins"  # the README's worked plugins


@pytest.mark.parametrize(
    "file, method", [("cosine_alignment.py", "cosine"), ("peer_mean_teacher.py", "peer-mean-teacher")]
)
def test_the_shipped_plugins_run_under_both_engines_with_the_same_result(
    on_ray, tmp_path, population_state, file, method
):
    overrides = [
        f"plugins=[{SHIPPED / file}]",
        f"method.name={method}",
        "members=[cnn16, cnn32, cnn16]",
        *TINY,
        *(["method.terms.peer_mean_teacher.decay=0.9"] * (method == "peer-mean-teacher")),
        f"output_dir={tmp_path}",
    ]
    local = train(load_config(None, overrides), run_dir=str(tmp_path / "local"), quiet=True)
    remote = train(load_config(None, [*overrides, *on_ray]), run_dir=str(tmp_path / "ray"), quiet=True)
    a, b = population_state(local.run_dir), population_state(remote.run_dir)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert all(
        r[c] > 0 for r in local.rows if r["kind"] == "member" for c in ("cosine_align", "peer_mean_teacher") if c in r
    )
    if method == "peer-mean-teacher":  # the EMA copy is in the checkpoint, moved toward the network, not equal to it
        teacher, net = (
            {k.removeprefix(f"m0.modules.{m}."): v for k, v in a.items() if k.startswith(f"m0.modules.{m}.")}
            for m in ("mean_teacher", "net")
        )
        assert teacher.keys() == net.keys() and not all(torch.equal(teacher[k], net[k]) for k in teacher)


@pytest.mark.parametrize(
    "file, method, space, metric",
    [
        (
            "cosine_alignment.py",
            "cosine",
            "method.feature_update.optimizer.lr: {loguniform: [1.0e-5, 1.0e-3]}",
            "m0_cosine_align",
        ),
        (
            "peer_mean_teacher.py",
            "peer-mean-teacher",
            "method.terms.peer_mean_teacher.decay: {uniform: [0.5, 0.99]}",
            "m0_peer_mean_teacher",
        ),
    ],
)
def test_the_shipped_plugins_are_searched_by_okd_ray_tune(
    ray_cluster, tmp_path, capsys, monkeypatch, file, method, space, metric
):
    """The plugin given by a path relative to where okd-ray tune runs: every trial runs in a folder of its own."""
    path = tmp_path / "space.yaml"
    path.write_text(space + "\n")
    monkeypatch.chdir(SHIPPED)
    code = main(
        [
            "tune",
            f"plugins=[{file}]",
            f"method.name={method}",
            *TINY,
            "data.validation=20",
            "--num-samples",
            "2",
            "--scheduler",
            "none",
            "--metric",
            metric,
            "--mode",
            "min",
            "--storage-path",
            str(tmp_path),
            "--name",
            "plugin-sweep",
            "--space",
            str(path),
        ]
    )
    assert code == 0, capsys.readouterr().err
    trials = pq.read_table(tmp_path / "plugin-sweep" / "trials.parquet").to_pylist()
    assert len(trials) == 2 and all(t[metric] > 0 for t in trials)
    assert read_raw(tmp_path / "plugin-sweep" / "best_config.yaml")["plugins"] == [str(SHIPPED / file)]  # as found


def test_a_broken_plugin_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import torch\n\nraise ValueError('no such thing')\n")
    with pytest.raises(ConfigError, match=r"plugins: .*broken.py, line 3: ValueError: no such thing"):
        load_config(None, [f"plugins=[{path}]"])
    with pytest.raises(ConfigError, match="plugins: file 'missing.py' not found"):
        load_config(None, ["plugins=[missing.py]"])


CLASHING = '''
from torch import nn

from okd_ray.errors import ConfigError
from okd_ray.methods import CrossEntropy, OwnedOptimizer, Term, register_method
from okd_ray.optim import OptimizerConfig, make_optimizer


class Shadow(Term):
    """Owns a module named like the member's network: it would replace the network in the checkpoint."""

    name = "shadow"

    def __init__(self, settings, member):
        super().__init__(settings, member)
        self.layer = nn.Linear(2, 2)

    def loss(self, batch):
        return batch.logits.sum() * 0

    def modules(self):
        return {"net": self.layer}


class ShadowOptimizer(Shadow):
    name = "shadow_optimizer"

    def modules(self):
        return {"shadow_layer": self.layer}

    def optimizers(self):
        config = OptimizerConfig()
        return {"logit": OwnedOptimizer(make_optimizer(self.layer.parameters(), config), config)}


class NeedsThree(Term):
    """Refuses a population it cannot serve, before any part starts (OKDDip needs three members)."""

    name = "needs_three"

    @classmethod
    def check(cls, config):
        if len(config.members) < 3:
            raise ConfigError(f"method needs-three: give at least 3 members, got {len(config.members)}")

    def loss(self, batch):
        return batch.logits.sum() * 0


class RefusesWhenBuilt(NeedsThree):
    """The same refusal from ``__init__``: found too, while the run is planned."""

    name = "refuses_when_built"
    check = Term.check

    def __init__(self, settings, member):
        super().__init__(settings, member)
        if member.count < 3:
            raise ConfigError(f"method refuses-when-built: give at least 3 members, got {member.count}")


register_method("shadow", [CrossEntropy, Shadow])
register_method("shadow-optimizer", [CrossEntropy, ShadowOptimizer])
register_method("needs-three", [CrossEntropy, NeedsThree])
register_method("refuses-when-built", [CrossEntropy, RefusesWhenBuilt])
'''


@pytest.fixture(scope="module")
def clashing(plugin_file):
    return plugin_file("clashing.py", CLASHING)


@pytest.mark.parametrize(
    "method, expected",
    [
        ("shadow", "method shadow: term shadow's module 'net' is the member's own name; rename it in shadow.modules()"),
        (
            "shadow-optimizer",
            "method shadow-optimizer: term shadow_optimizer's optimizer 'logit' is the member's own "
            "name; rename it in shadow_optimizer.optimizers()",
        ),
        ("needs-three", "method needs-three: give at least 3 members, got 2"),
        ("refuses-when-built", "method refuses-when-built: give at least 3 members, got 2"),
    ],
)
def test_a_terms_clash_or_refusal_is_found_while_the_run_is_planned(clashing, method, expected):
    """A term module named ``net`` once replaced the network in ``m0.pt``; now no part is built."""
    with pytest.raises(ConfigError) as error:
        plan_population(load_config(None, [f"plugins=[{clashing}]", f"method.name={method}", *TINY]))
    assert str(error.value) == expected


def test_a_terms_refusal_on_ray_is_one_message_before_any_actor_starts(clashing, tmp_path, okd_ray):
    """It was an actor traceback and a 'Fatal Python error' dump (79 lines)."""
    result = okd_ray.run(
        "train",
        f"plugins=[{clashing}]",
        "method.name=needs-three",
        "engine=ray",
        *TINY,
        f"output_dir={tmp_path / 'runs'}",
    )
    okd_ray.assert_error(result, 2, "method needs-three: give at least 3 members, got 2")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


FAILING_TERMS = """
import torch.nn.functional as F

from okd_ray.methods import CrossEntropy, Term, register_method


class WrongShapes(Term):
    name = "wrong_shapes"

    def loss(self, batch):
        return (batch.logits @ batch.logits).mean()  # (32, 10) @ (32, 10): a shape error, deep in torch


class PerSample(Term):
    name = "per_sample"

    def loss(self, batch):
        return F.cross_entropy(batch.logits, batch.labels, reduction="none")  # one loss per image


register_method("raises", [CrossEntropy, WrongShapes])
register_method("per-sample", [CrossEntropy, PerSample])
"""


RAISES = (
    "raises",
    "the loss of term 'wrong_shapes' raised RuntimeError: mat1 and mat2 shapes cannot be multiplied "
    "(32x10 and 32x10) at epoch 1, step 1; fix it in {plugin}:11",
)
PER_SAMPLE = (
    "per-sample",
    "the loss of term 'per_sample' returned a tensor of shape (32,), not one number (a 0-d "
    "tensor: reduce it, e.g. with .mean()) at epoch 1, step 1; fix it in {plugin}",
)


@pytest.mark.parametrize("engine, method, problem", [("local", *RAISES), ("local", *PER_SAMPLE), ("ray", *RAISES)])
def test_a_plugin_term_that_fails_is_one_error_naming_the_term_the_part_and_its_line(
    plugin_file, okd_ray, tmp_path, engine, method, problem
):
    """Before: a raw traceback (82 lines with ANSI codes on Ray) naming neither the term nor the part."""
    plugin = plugin_file("failing_terms.py", FAILING_TERMS)
    result = okd_ray.run(
        "train",
        f"plugins=[{plugin}]",
        f"method.name={method}",
        f"engine={engine}",
        "epochs=1",
        "data.train_limit=64",
        "data.batch_size=32",
        f"output_dir={tmp_path / 'runs'}",
        "--quiet",
    )
    err = okd_ray.assert_error(result, 2, problem.format(plugin=plugin))
    first = r"m0:cnn16" if engine == "local" else r"(m0:cnn16|m1:cnn32)"  # on Ray both raise, one is heard first
    assert re.search(f"error: {first}: the loss of term", err), err
    assert not (tmp_path / "runs").exists(), "a run that failed in its first step leaves no folder"


def test_a_term_knows_every_members_feature_map_shape(tiny_config):
    """A term sized to a peer's map (a FitNets hint from the ring predecessor: a 1x1 regressor from its own channels
    to the predecessor's) reads the shapes from MemberInfo.feature_shapes, in member order, its own among them."""
    from dataclasses import replace

    from torch import nn

    from okd_ray.methods import Term
    from okd_ray.optim import Stepper
    from okd_ray.population.plan import build_terms, member_network
    from okd_ray.precision import Precision

    class Hint(Term):
        name = "hint"

        def __init__(self, settings, member):
            super().__init__(settings, member)
            own, predecessor = member.feature_shape, member.feature_shapes[member.index - 1]
            self.regressor = nn.Conv2d(own[0], predecessor[0], 1)
            self.shapes = member.feature_shapes

    config = tiny_config("method.name=dml", "members=[cnn16, cnn32, cnn64]")
    plan = plan_population(config)
    members = [spec for spec in plan.specs if spec.pid.kind == "member"]
    assert len({spec.shape for spec in members}) == 3  # three different maps
    for spec in members:
        spec = replace(spec, terms=((Hint, Hint.Settings()),))
        (hint,) = build_terms(spec, member_network(spec), Stepper(Precision("fp32", torch.device("cpu"))))
        assert hint.shapes == tuple(s.shape for s in members) and hint.shapes[spec.index] == spec.shape
        assert hint.regressor.out_channels == members[spec.index - 1].shape[0]

"""A user's own method and data set, defined in a file outside okd-ray, under both engines and okd-ray tune."""

import pyarrow.parquet as pq
import pytest

from okd_ray.cli import main
from okd_ray.config import load_config
from okd_ray.errors import ConfigError
from okd_ray.run import train

PLUGIN = '''
from dataclasses import replace

import torch
from pydantic import Field

from okd_ray.data import DataInfo, digits, register_dataset
from okd_ray.data.tensor_dataset import TensorDataset
from okd_ray.methods import CrossEntropy, Need, Term, TermSettings, register_method


class PeerMSE(Term):
    """Squared distance to every peer's logits, scaled."""

    name = "peer_mse"
    needs = frozenset({Need.PEER_LOGITS})

    class Settings(TermSettings):
        scale: float = Field(0.5, gt=0)

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
'''
TINY = ["epochs=1", "data.train_limit=64", "data.test_limit=64", "data.batch_size=32", "threads=1",
        "ray.num_cpus_per_member=0.4"]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """One file for the module: a second file registering the same method name would be refused."""
    path = tmp_path_factory.mktemp("plugin") / "my_method.py"
    path.write_text(PLUGIN)
    return path


def test_a_plugin_method_runs_under_both_engines_with_the_same_result(ray_cluster, plugin, tmp_path, population_state):
    overrides = [f"plugins=[{plugin}]", "method.name=mse-peers", "method.terms.peer_mse.weight=2",
                 "data.name=digit-pairs", *TINY, f"output_dir={tmp_path}"]
    config = load_config(None, overrides)
    assert config.method.settings("peer_mse").scale == 0.25  # the row's default
    local = train(config, run_dir=str(tmp_path / "local"), quiet=True)
    remote = train(load_config(None, [*overrides, "engine=ray"]), run_dir=str(tmp_path / "ray"), quiet=True)
    table = pq.read_table(tmp_path / "local" / "metrics.parquet").to_pylist()
    assert all(r["peer_mse"] > 0 for r in table if r["kind"] == "member")  # its column, with no list edited
    assert all(r["test_top5"] == 100 for r in table)  # the plugin's data set: five classes
    a, b = population_state(local.run_dir), population_state(remote.run_dir)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_a_plugin_method_is_searched_by_okd_ray_tune(ray_cluster, plugin, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("method.terms.peer_mse.scale: {uniform: [0.1, 1.0]}\n")
    code = main(["tune", f"plugins=[{plugin}]", "method.name=mse-peers", *TINY, "data.validation=20", "--num-samples", "2",
                 "--scheduler", "none", "--metric", "m0_peer_mse", "--mode", "min", "--storage-path", str(tmp_path),
                 "--name", "plugin-sweep", "--space", str(space)])
    assert code == 0, capsys.readouterr().err
    trials = pq.read_table(tmp_path / "plugin-sweep" / "trials.parquet").to_pylist()
    assert len(trials) == 2 and all(t["m0_peer_mse"] > 0 for t in trials)


def test_a_broken_plugin_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import torch\n\nraise ValueError('no such thing')\n")
    with pytest.raises(ConfigError, match=r"plugins: .*broken.py, line 3: ValueError: no such thing"):
        load_config(None, [f"plugins=[{path}]"])
    with pytest.raises(ConfigError, match="plugins: file 'missing.py' not found"):
        load_config(None, ["plugins=[missing.py]"])

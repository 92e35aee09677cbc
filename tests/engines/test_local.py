"""The local engine: learning on real data for every method, exact resume, divergence handling."""

import pytest
import torch

from okd_ray.run import CHECKPOINT, resume, train
from okd_ray.errors import TrainingDiverged
from okd_ray.methods import METHODS
from okd_ray.storage import RunStore


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_learns_digits(tiny_config, method):
    config = tiny_config(f"method.name={method}", "epochs=3", "data.train_limit=640", "data.test_limit=200",
                         "method.afd.feature_optimizer.lr=1e-4", "method.afd.disc_optimizer.lr=1e-4")
    result = train(config, quiet=True)
    final = result.final()
    members = [p for p, r in final.items() if r["kind"] == "member"]
    assert len(members) == 2
    for part in members + ["ensemble"] + (["fused"] if METHODS[method].fusion else []):
        assert final[part]["test_top1"] > 50.0, (part, final[part])  # chance is 10 %
    row = final[members[0]]
    assert row["ce"] is not None and (row["kl_peer"] is not None) == (METHODS[method].logit_peers != "none")
    assert (row["adv_g"] is not None) == (METHODS[method].feature == "adversarial")


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("method", ["afd", "afd+ffl"])
def test_resume_ends_with_the_same_parameters(tiny_config, tmp_path, population_state, method):
    # a multistep schedule does not depend on the total epochs, so a 2-epoch run is the first 2 epochs of 3
    config = tiny_config(f"method.name={method}", "epochs=3", "schedule={kind: multistep, milestones: [1]}")
    straight = train(config, run_dir=str(tmp_path / "straight"), quiet=True)
    first = train(config.model_copy(update={"epochs": 2}), run_dir=str(tmp_path / "split"), quiet=True)
    assert max(r["epoch"] for r in first.rows) == 1
    resumed = resume(first.run_dir, ["epochs=3"], quiet=True)
    assert_same_state(population_state(straight.run_dir), population_state(resumed.run_dir))
    assert [r["test_top1"] for r in straight.rows] == [r["test_top1"] for r in resumed.rows]


def test_divergence_names_member_term_epoch_step_and_keeps_checkpoint(tiny_config, tmp_path):
    config = tiny_config("method.name=dml", "epochs=1")
    first = train(config, run_dir=str(tmp_path / "run"), quiet=True)
    with pytest.raises(TrainingDiverged) as err:
        resume(first.run_dir, ["epochs=2", "members.1.optimizer.lr=1e30"], quiet=True)
    message = str(err.value)
    assert "m1:cnn32" in message and "epoch 1" in message and "step" in message
    assert "last good checkpoint (epoch 1)" in message
    store = RunStore(first.run_dir)
    assert store.load_torch(CHECKPOINT)["epoch"] == 1
    assert {r["epoch"] for r in store.read_table("metrics.parquet").to_pylist()} == {0}

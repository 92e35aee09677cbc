"""The local engine: learning on real data for every method, exact resume, divergence handling."""

import re

import pytest

from okd_ray.checkpoint import read_manifest
from okd_ray.config import load_config
from okd_ray.errors import TrainingDiverged
from okd_ray.methods import BUILT_IN_METHODS, METHODS, Need
from okd_ray.population.spec import fusion_term
from okd_ray.run import resume, train
from okd_ray.storage import RunStore

# ONE gates branches on a shared trunk: three resnet8 branches after its first two stages. OKDDip: two peers and
# the group leader.
SET_UP = {
    "one": ["members=[{arch: resnet8}, {arch: resnet8}, {arch: resnet8}]", "trunk_stages=2"],
    "okddip": ["members=[{arch: cnn16}, {arch: cnn16}, {arch: cnn32}]"],
}


@pytest.mark.parametrize("method", BUILT_IN_METHODS)  # not a test module's own plugin methods
def test_every_method_learns_digits(tiny_config, method):
    config = tiny_config(
        f"method.name={method}", "epochs=3", "data.train_limit=640", "data.test_limit=200", *SET_UP.get(method, [])
    )
    result = train(config, quiet=True)
    final = result.final()
    members = [p for p, r in final.items() if r["kind"] == "member"]
    assert len(members) == len(config.members)
    method_ = METHODS[method]
    classifies = Need.FUSION in method_.needs and fusion_term(method_).fuser.classifies  # OKDDip's part does not
    for part in members + ["ensemble"] + (["fused"] if classifies else []):
        assert final[part]["test_top1"] > 50.0, (part, final[part])  # chance is 10 %
    for column in METHODS[method].columns():  # every term's loss reaches the metrics, unweighted
        assert all(final[m][column] is not None for m in members), column


@pytest.mark.parametrize(
    "method, precision", [("afd", "fp32"), ("afd+ffl", "fp32"), ("one", "fp32"), ("afd+ffl", "fp16")]
)  # fp16: every part's loss scale is saved
def test_resume_ends_with_the_same_parameters(tiny_config, tmp_path, population_state, same_state, method, precision):
    # a multistep schedule does not depend on the total epochs, so a 2-epoch run is the first 2 epochs of 3
    config = tiny_config(
        f"method.name={method}",
        "epochs=3",
        "schedule={kind: multistep, milestones: [1]}",
        f"precision={precision}",
        *SET_UP.get(method, []),
    )
    straight = train(config, run_dir=str(tmp_path / "straight"), quiet=True)
    first = train(config.model_copy(update={"epochs": 2}), run_dir=str(tmp_path / "split"), quiet=True)
    assert max(r["epoch"] for r in first.rows) == 2
    resumed = resume(first.run_dir, ["epochs=3"], quiet=True)
    same_state(population_state(straight.run_dir), population_state(resumed.run_dir))
    assert [r["test_top1"] for r in straight.rows] == [r["test_top1"] for r in resumed.rows]


def test_divergence_names_member_term_epoch_step_and_keeps_checkpoint(tiny_config, tmp_path):
    # the learning rate jumps to 5e28 after the first epoch, so the second diverges
    config = tiny_config("method.name=dml", "epochs=2", "schedule={kind: multistep, milestones: [1], gamma: 1e30}")
    with pytest.raises(TrainingDiverged) as err:
        train(config, run_dir=str(tmp_path / "run"), quiet=True)
    message = str(err.value)
    assert "m0:cnn16" in message and "epoch 2" in message and "step" in message
    assert "last good checkpoint (epoch 1)" in message
    assert (err.value.part, err.value.epoch, err.value.step > 0) == ("m0:cnn16", 2, True)  # the message's fields
    # the fix names real config keys: the member's learning rate, or the weight of the term that diverged
    fix = err.value.keys[0]
    assert f"; lower {fix}" in message
    assert fix == "members.0.optimizer.lr" or re.fullmatch(r"method\.terms\.(ce|peer_kl)\.weight", fix), message
    store = RunStore(str(tmp_path / "run"))
    assert read_manifest(store).latest.epoch == 1
    assert {r["epoch"] for r in store.read_table("metrics.parquet").to_pylist()} == {1}


def test_a_crash_between_shards_and_manifest_keeps_the_previous_checkpoint(
    tiny_config, tmp_path, population_state, same_state, monkeypatch
):
    import okd_ray.run

    config = tiny_config("method.name=afd+ffl", "epochs=3", "schedule={kind: multistep, milestones: [1]}")
    straight = train(config, run_dir=str(tmp_path / "straight"), quiet=True)
    commit = okd_ray.run.commit

    def crash_at_epoch_two(store, checkpoint):
        if checkpoint.epoch == 2:
            raise RuntimeError("the driver died after the parts wrote their shards")
        commit(store, checkpoint)

    monkeypatch.setattr(okd_ray.run, "commit", crash_at_epoch_two)
    run_dir = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="driver died"):
        train(config, run_dir=str(run_dir), quiet=True)
    store = RunStore(str(run_dir))
    assert (run_dir / "checkpoints" / "epoch-0002").is_dir() and read_manifest(store).latest.epoch == 1
    monkeypatch.setattr(okd_ray.run, "commit", commit)
    resumed = resume(str(run_dir), quiet=True)
    same_state(population_state(straight.run_dir), population_state(resumed.run_dir))
    # the newest checkpoint and the one before it, to fall back on
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch-0002", "epoch-0003", "manifest.json"]


def test_a_diverging_discriminator_names_keys_that_exist(tiny_config, tmp_path):
    config = tiny_config("method.terms.adversarial.discriminator_optimizer.lr=1e30", "epochs=1")
    with pytest.raises(TrainingDiverged) as err:
        train(config, run_dir=str(tmp_path / "run"), quiet=True)
    keys = err.value.keys
    assert "method.terms.adversarial.discriminator_optimizer.lr" in keys, str(err.value)
    for key in keys:  # each one a key a user can set
        load_config(None, [f"{key}=0.001"])

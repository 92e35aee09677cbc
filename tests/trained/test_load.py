"""okd_ray.load_model gives every part of every kind of population as one module whose logits are, bit for bit, what
the run's own evaluation computed; okd_ray.load_transform feeds it as the run's data set did; neither needs the data."""

import contextlib
import shutil

import pytest
import torch

import okd_ray
from okd_ray.checkpoint import load_shards
from okd_ray.data import DATASETS, digits
from okd_ray.errors import ConfigError, DataError
from okd_ray.metrics import ensemble_logits, teacher_logits
from okd_ray.population.plan import _cached_dataset
from okd_ray.storage import RunStore


def member(k):
    return lambda batch: batch[1][k]


def ensemble(batch):
    return ensemble_logits(batch[1])


def fused(batch):
    return batch[2]


def teacher(batch):
    return teacher_logits(batch[3], batch[1])


def assert_as_evaluated(run_dir, evaluation, parts, autocast=None):
    """Each of ``parts`` (name -> its logits in an evaluation batch) loaded and run on the test images."""
    images, batches = evaluation(run_dir)
    for part, logits_of in parts.items():
        model = okd_ray.load_model(run_dir, part)
        assert not model.training
        with torch.no_grad(), autocast or contextlib.nullcontext():
            for x, batch in zip(images, batches, strict=True):
                assert torch.equal(model(x), logits_of(batch)), part


def test_ffl_members_ensemble_and_fused_classifier(ffl_run, evaluation):
    assert_as_evaluated(
        ffl_run, evaluation, {"m0": member(0), "m1:resnet8": member(1), "ensemble": ensemble, "fused": fused}
    )
    model = okd_ray.load_model(ffl_run, "fused")  # one module: both members' networks and the fusion module
    assert {name for name, _ in model.named_children()} == {"members", "head"}


def test_pcl_deploys_its_temporal_means_on_the_trunks_mean(pcl_run, evaluation):
    assert_as_evaluated(pcl_run, evaluation, {"m0": member(0), "m1": member(1), "ensemble": ensemble, "fused": fused})
    shards = load_shards(RunStore(pcl_run))
    model = okd_ray.load_model(pcl_run, "m1")
    for deployed, key, name in [(model.trunk, "trunk", "mean_trunk"), (model.members[0], "m1", "mean_network")]:
        mean, live = shards[key]["modules"][name], shards[key]["modules"]["net"]
        assert all(torch.equal(v, mean[k]) for k, v in deployed.state_dict().items())
        assert not all(torch.equal(mean[k], live[k]) for k in mean)  # the means are not the trained networks


def test_one_branch_on_the_trunk_and_the_gated_teacher(one_run, evaluation):
    assert_as_evaluated(one_run, evaluation, {"m2": member(2), "teacher": teacher, "ensemble": ensemble})


def test_torchvision_and_replicated_members_of_a_bf16_run(afd_tv_replicas_bf16_run, evaluation):
    """float32 weights (one copy of the replicas); under the run's autocast, its evaluation's logits exactly. The
    networks alone: AFD's transfer layers and discriminators stay behind."""
    run = afd_tv_replicas_bf16_run
    assert_as_evaluated(
        run,
        evaluation,
        {"m0": member(0), "m1:tv:resnet18": member(1), "ensemble": ensemble},
        torch.autocast("cpu", dtype=torch.bfloat16),
    )
    held = load_shards(RunStore(run))["m0"]["modules"]
    assert {"net", "transfer", "discriminator"} <= held.keys()
    state = okd_ray.load_model(run, "m0").members[0].state_dict()
    assert state.keys() == held["net"].keys() and all(torch.equal(v, held["net"][k]) for k, v in state.items())
    assert {p.dtype for p in okd_ray.load_model(run, "m1").parameters()} == {torch.float32}
    assert {p.dtype for p in okd_ray.load_model(run, "m1", dtype=torch.bfloat16).parameters()} == {torch.bfloat16}


def test_load_transform_makes_the_runs_test_batches(ffl_run, evaluation):
    transform = okd_ray.load_transform(ffl_run)
    assert (transform.info.in_channels, transform.info.image_size, transform.normalisation.max_value) == (1, 8, 16)
    images, _ = evaluation(ffl_run)
    assert torch.equal(transform(digits.load().test_images[:128]), torch.cat(images))
    with pytest.raises(DataError, match=r"take 1×8×8 images .* got shape \(3, 8, 8\)"):
        transform(torch.zeros(3, 8, 8))


def test_a_run_loads_without_its_data_set_and_from_a_uri(ffl_run, monkeypatch):
    expected = okd_ray.load_model(ffl_run, "fused").state_dict()

    def missing(config, seed):
        raise DataError("digits are not on this machine")

    monkeypatch.setitem(DATASETS, "digits", missing)
    for where in (ffl_run, f"file://{ffl_run}"):
        state = okd_ray.load_model(where, "fused").state_dict()
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    assert okd_ray.load_transform(ffl_run).info.num_classes == 10


def test_a_run_folder_from_before_the_inputs_record(ffl_run, tmp_path, monkeypatch):
    """It loads where its data set does; elsewhere one message says what is missing and where it loads."""
    old = shutil.copytree(ffl_run, tmp_path / "old")
    (old / "inputs.json").unlink()
    derived, recorded = okd_ray.load_transform(str(old)), okd_ray.load_transform(ffl_run)
    assert (derived.info, derived.normalisation, derived.trained_with) == (recorded.info, recorded.normalisation, "")
    okd_ray.load_model(str(old), "m1")
    monkeypatch.setitem(DATASETS, "digits", lambda config, seed: (_ for _ in ()).throw(DataError("no digits here")))
    _cached_dataset.cache_clear()  # the digits this process loaded
    with pytest.raises(DataError, match="inputs.json is missing .*no digits here.*where its data set is"):
        okd_ray.load_model(str(old))


@pytest.mark.parametrize(
    "part, message",
    [
        (
            "m0:cnn32",
            "part 'm0:cnn32': a run of 2 members, method afd, has no such part; did you mean m0:cnn16? its "
            "parts: m0, m1, ensemble",
        ),
        ("fused", "part 'fused': a run of 2 members, method afd, has no such part"),
        ("teacher", "its parts: m0, m1, ensemble"),
    ],
)
def test_a_part_the_run_has_not(afd_tv_replicas_bf16_run, part, message):
    with pytest.raises(ConfigError) as error:
        okd_ray.load_model(afd_tv_replicas_bf16_run, part)
    assert message in str(error.value)


def test_a_folder_without_config_or_checkpoint(ffl_run, tmp_path):
    with pytest.raises(ConfigError, match="no config.yaml there; give the folder of an okd-ray run"):
        okd_ray.load_model(str(tmp_path))
    shutil.copy(f"{ffl_run}/config.yaml", tmp_path)
    with pytest.raises(ConfigError, match=r"holds no checkpoint \(checkpoints/manifest.json is missing\)"):
        okd_ray.load_model(str(tmp_path))
    with pytest.raises(ConfigError, match="checkpoint 7: .* keeps the checkpoints of epochs 2, 1; give one of them"):
        okd_ray.load_model(ffl_run, checkpoint=7)

"""The Ray engine against the local one: the spine of the project."""

import threading
import time

import pytest
import torch

from okd_ray.engines.run import CHECKPOINT, train
from okd_ray.errors import ConfigError

POPULATIONS = {
    "afd-3-heterogeneous": ["method.name=afd", "members=[{arch: cnn16}, {arch: cnn32}, {arch: resnet8}]"],
    "ffl-3-heterogeneous": ["method.name=ffl", "members=[{arch: cnn16}, {arch: cnn32}, {arch: resnet8}]"],
    "afd+ffl": ["method.name=afd+ffl", "members=[{arch: cnn16}, {arch: resnet8}]"],
    "dml": ["method.name=dml"],
}
# 1 epoch of 4 steps; the whole population state (weights, BN statistics, optimizer moments, RNG) is compared.
STEPS = ["epochs=1", "data.train_limit=128", "data.batch_size=32", "data.test_limit=64",
         "ray.num_cpus_per_member=0.4", "ray.num_cpus_fusion=0.4"]


def assert_states_close(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith("rng.cpu."):
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("population", list(POPULATIONS))
def test_ray_engine_matches_local_engine(ray_cluster, tiny_config, tmp_path, population_state, population):
    overrides = STEPS + POPULATIONS[population]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each actor: the same kernels, so the same rounding
    try:
        local = train(tiny_config(*overrides), run_dir=str(tmp_path / "local"), quiet=True)
    finally:
        torch.set_num_threads(threads)
    reference = population_state(local.run_dir)
    for transport in ("object_store", "compiled"):
        config = tiny_config(*overrides, "engine=ray", f"ray.transport={transport}")
        run = train(config, run_dir=str(tmp_path / transport), quiet=True)
        assert_states_close(reference, population_state(run.run_dir))
        for a, b in zip(local.rows, run.rows):
            assert a["part"] == b["part"]
            assert a["test_top1"] == pytest.approx(b["test_top1"], abs=2.0)


@pytest.mark.parametrize("transport", ["object_store", "compiled"])
def test_killed_member_actor_resumes_to_the_same_parameters(ray_cluster, tiny_config, tmp_path, population_state, transport):
    overrides = [*STEPS, "epochs=3", "data.train_limit=256", "method.name=afd+ffl", "engine=ray",
                 f"ray.transport={transport}", "schedule={kind: multistep, milestones: [2]}"]
    straight = train(tiny_config(*overrides), run_dir=str(tmp_path / "straight"), quiet=True)

    run_dir = tmp_path / "killed"
    killed = []

    def kill_member_after_first_checkpoint():
        deadline = time.monotonic() + 120
        while not (run_dir / CHECKPOINT).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        names = [n for n in ray_cluster.util.list_named_actors() if n.endswith("-m1")]
        ray_cluster.kill(ray_cluster.get_actor(names[0]))
        killed.append(names[0])

    killer = threading.Thread(target=kill_member_after_first_checkpoint)
    killer.start()
    result = train(tiny_config(*overrides), run_dir=str(run_dir), quiet=True)
    killer.join()
    assert killed and result.restarts == 1
    assert_states_close(population_state(straight.run_dir), population_state(result.run_dir))
    assert [r["epoch"] for r in result.rows] == [r["epoch"] for r in straight.rows]


def test_unmeetable_resources_are_a_clear_error(ray_cluster, tiny_config):
    config = tiny_config("engine=ray", "ray.num_gpus_per_member=4")
    with pytest.raises(ConfigError, match=r"needs 8 GPU .* the cluster has 0; set ray.num_gpus_per_member=0"):
        train(config, quiet=True)

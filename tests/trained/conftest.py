"""Real tiny runs, each trained once per test session and shared by the tests that load, evaluate and export them."""

import pytest

from okd_ray.config import load_config
from okd_ray.engines.local import LocalEngine
from okd_ray.population import plan_population, population_eval
from okd_ray.trained.load import find_checkpoint, open_run

TINY = ["epochs=1", "data.train_limit=64", "data.test_limit=64", "data.batch_size=32"]  # two steps


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A factory: the folder of a local run of ``TINY`` and the overrides given, trained once per session (the
    structure matters here, not what the networks learn)."""
    from okd_ray.run import train

    runs = {}

    def get(*overrides: str) -> str:
        if overrides not in runs:
            config = load_config(None, [*TINY, *overrides])
            runs[overrides] = train(config, run_dir=str(tmp_path_factory.mktemp("run")), quiet=True).run_dir
        return runs[overrides]

    return get


@pytest.fixture(scope="session")
def ffl_run(trained):
    """Two epochs, so that two checkpoints are kept, more test images, and a validation split."""
    return trained(
        "method.name=ffl",
        "members=[cnn16, resnet8]",
        "epochs=2",
        "data.test_limit=128",
        "data.train_limit=96",
        "data.validation=32",
    )


@pytest.fixture(scope="session")
def pcl_run(trained):
    """The temporal means deployed: of the branches, and of the trunk's stages (its hook's)."""
    return trained("method.name=pcl", "members=[resnet8, resnet8]", "trunk_stages=2")


@pytest.fixture(scope="session")
def one_run(trained):
    return trained("method.name=one", "members=[resnet8, resnet8, resnet8]", "trunk_stages=2")


@pytest.fixture(scope="session")
def afd_tv_replicas_bf16_run(trained):
    """AFD (transfer layers to the ring's map, discriminators) with a torchvision member, every member in two
    replicas, autocast to bf16. On CIFAR-sized images: on the digits' 8x8, ResNet-18's third stage gets 1x1 maps,
    where the CPU's bf16 convolution backward (3x3, stride 2, padding 1) returns NaN in about a third of calls
    (torch 2.14.1; uninitialised memory, so the run diverged at random)."""
    return trained(
        "method.name=afd",
        "members=[{arch: cnn16, replicas: 2}, {arch: 'tv:resnet18', replicas: 2}]",
        "precision=bf16",
        "data.name=synthetic-cifar100",
        "data.validation=0",
    )


@pytest.fixture(scope="session")
def evaluation():
    """A run's last checkpoint through its own evaluation (the local engine, ``population_eval``) on the test split:
    the test images and, per batch, (labels, member logits, fused logits, gate)."""

    def run(run_dir: str):
        trained = open_run(run_dir)
        plan = plan_population(trained.config)
        engine = LocalEngine(trained.config, plan)
        try:
            engine.load(trained.store, find_checkpoint(trained.store))
            for part in engine.parts:
                part.begin_eval("test")
            batches = population_eval(engine.population, plan.num_eval_batches["test"])
        finally:
            engine.close()
        return [x for x, _ in plan.dataset.eval_batches("test")], batches

    return run

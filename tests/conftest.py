"""Shared fixtures: small configs on the embedded digits data set, and the real okd-ray command."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from forked import Forked

from okd_ray.config import load_config


@pytest.fixture
def tiny_config(tmp_path):
    """A factory: the embedded default made tiny (few samples, few epochs), with overrides."""

    def make(*overrides: str):
        base = [
            "epochs=2",
            "data.train_limit=256",
            "data.test_limit=128",
            "data.batch_size=32",
            f"output_dir={tmp_path / 'runs'}",
        ]
        return load_config(None, base + list(overrides))

    return make


@pytest.fixture(scope="session")
def plugin_file(tmp_path_factory):
    """A factory: a plugin's source as a file, for a module-scoped fixture. A term or method name registers once
    per process, so a second file with the same names would be refused."""

    def write(name: str, source: str) -> Path:
        path = tmp_path_factory.mktemp("plugin") / name
        path.write_text(source)
        return path

    return write


@pytest.fixture(scope="session")
def ray_nodes():
    """The session's one Ray cluster: a real multi-node cluster on this machine (a head without CPUs and three 1-CPU
    worker nodes, each its own raylet), as ``ray up`` would give on machines. Started by the first test that needs
    it; every Ray test of the session shares it, and the warm hosts its populations leave."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(3):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def ray_cluster(ray_nodes):
    """The ``ray`` module, connected to the session's cluster."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_nodes.address, configure_logging=False, log_to_driver=False)
    return ray


@pytest.fixture
def on_ray(ray_cluster):
    """The overrides that run a population on the session's cluster: a tenth of a CPU per part, so that any of the
    tests' populations fits on one node and each can take warm hosts from the ones before it (a host serves a
    bundle of the same resources). With ``threads=1`` in the population, as locally, the engines are bit-identical."""
    return ("engine=ray", "ray.num_cpus_per_member=0.1", "ray.num_cpus_fusion=0.1")


@pytest.fixture
def cluster_address(ray_cluster):
    """The session cluster's address for a command in another process, with its CPUs free: the warm hosts this
    process keeps are given back first (they would hold bundles the command's trials or parts need)."""
    from okd_ray.engines import release_hosts

    release_hosts()
    return ray_cluster.get_runtime_context().gcs_address


def flatten(obj, prefix=""):
    """A nested state dict as {dotted key: tensor}, for exact or tolerant comparison."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in flatten(value, f"{prefix}{i}.").items()}
    return {prefix: torch.as_tensor(obj)} if obj is not None else {}


@pytest.fixture(scope="session")
def local_runs(tmp_path_factory):
    """A factory: the local-engine run of a tuple of overrides, made once per session, as (the population's state,
    its metric rows): what every transport, every interrupted run and every placement is compared with. Where and
    how the parts run (``engine``, ``ray.*``) is left out: one reference serves every engine and placement."""
    from okd_ray.run import train

    runs = {}

    def get(overrides: tuple[str, ...], tiny_config, population_state):
        config = tiny_config(*overrides, "engine=local")
        population = json.dumps(config.model_dump(mode="json", exclude={"engine", "ray", "output_dir"}), sort_keys=True)
        if population not in runs:
            local = train(config, run_dir=str(tmp_path_factory.mktemp("local")), quiet=True)
            runs[population] = (population_state(local.run_dir), local.rows)
        return runs[population]

    return get


@pytest.fixture
def first_checkpoint():
    """Waits (up to ``timeout`` seconds) until the run in ``run_dir`` has committed its first checkpoint: its
    manifest lists one (the manifest is written before, with the run's config alone)."""
    from okd_ray.checkpoint import read_manifest
    from okd_ray.storage import RunStore

    def wait(run_dir, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            manifest = read_manifest(RunStore(str(run_dir))) if (Path(run_dir) / "checkpoints").exists() else None
            if manifest is not None and manifest.latest is not None:
                return
            time.sleep(0.02)
        raise AssertionError(f"{run_dir}: no checkpoint within {timeout} s")

    return wait


@pytest.fixture
def flat_state():
    """``flatten``, for a test that compares parts' state dicts."""
    return flatten


@pytest.fixture
def same_state():
    """Asserts that two populations' whole states (weights, BN statistics, optimizer moments, RNG streams, loss
    scales; as ``population_state`` reads them) are equal bit for bit."""

    def check(a, b):
        assert a.keys() == b.keys()
        different = [key for key in a if not torch.equal(a[key], b[key])]
        assert not different, f"{len(different)} of {len(a)} tensors differ, first {different[:3]}"

    return check


@pytest.fixture
def population_state():
    """Reads a run's final checkpoint as a flat {key: tensor} of the whole population."""
    from okd_ray.checkpoint import load_shards
    from okd_ray.storage import RunStore

    return lambda run_dir: flatten(load_shards(RunStore(run_dir)))


ROOT = Path(__file__).resolve().parents[1]


class Command:
    """The real ``okd-ray`` command of this checkout in a process of its own, in folder ``cwd``: forked from a server
    that imported okd-ray once (``forked.py``), or, where a test needs an interpreter of its own (an environment
    read as modules import), ``python -m okd_ray.cli`` with the checkout first on PYTHONPATH (``argv``, ``env``)."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": path}
        self.started: list[Forked] = []

    def argv(self, *args) -> list[str]:
        return [sys.executable, "-m", "okd_ray.cli", *map(str, args)]

    def run(self, *args, timeout: float = 300) -> subprocess.CompletedProcess:
        process = self.start(*args)
        out, err = process.communicate(timeout)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def start(self, *args) -> Forked:
        self.started.append(Forked([str(a) for a in args], self.cwd, self.env))
        return self.started[-1]

    def start_until(self, path: Path, *args, timeout: float = 120) -> Forked:
        """``start``, then wait until the command has written ``path`` (it must still be running then)."""
        process = self.start(*args)
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        return process

    @staticmethod
    def assert_error(result, code: int, *texts: str) -> str:
        """Exit ``code``, no traceback, every one of ``texts`` in stderr (whitespace folded); returns that stderr."""
        err = " ".join(result.stderr.split())
        assert result.returncode == code, (result.returncode, result.stderr[-3000:])
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        for text in texts:
            assert text in err, (text, err)
        return err


@pytest.fixture
def okd_ray(tmp_path):
    command = Command(tmp_path)
    yield command
    for process in command.started:  # what a failed test left running
        process.kill()

"""Shared fixtures: small configs on the embedded digits data set, and the real okd-ray command."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from okd_ray.config import load_config


@pytest.fixture
def tiny_config(tmp_path):
    """A factory: the embedded default made tiny (few samples, few epochs), with overrides."""

    def make(*overrides: str):
        base = [
            "epochs=2", "data.train_limit=256", "data.test_limit=128", "data.batch_size=32",
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


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster (2 CPUs) for a test module (the multi-node tests start their own)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def flatten(obj, prefix=""):
    """A nested state dict as {dotted key: tensor}, for exact or tolerant comparison."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in flatten(value, f"{prefix}{i}.").items()}
    return {prefix: torch.as_tensor(obj)} if obj is not None else {}


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    """A factory: the local-engine run of a tuple of overrides, made once per test module, as (the population's
    state, its metric rows): what every transport and every interrupted run is compared with."""
    from okd_ray.run import train

    runs = {}

    def get(overrides: tuple[str, ...], tiny_config, population_state):
        if overrides not in runs:
            local = train(tiny_config(*overrides), run_dir=str(tmp_path_factory.mktemp("local")), quiet=True)
            runs[overrides] = (population_state(local.run_dir), local.rows)
        return runs[overrides]

    return get


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
    """The real ``okd-ray`` command of this checkout in a subprocess (``python -m okd_ray.cli`` with the checkout
    first on PYTHONPATH, so it runs this code whether or not okd-ray is installed), in folder ``cwd``."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": path}

    def argv(self, *args) -> list[str]:
        return [sys.executable, "-m", "okd_ray.cli", *map(str, args)]

    def run(self, *args, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self, *args) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def start_until(self, path: Path, *args, timeout: float = 120) -> subprocess.Popen:
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
    return Command(tmp_path)

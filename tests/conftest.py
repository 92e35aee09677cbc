"""Shared fixtures: small configs on the embedded digits data set."""

import pytest

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

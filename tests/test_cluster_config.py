"""cluster.yaml (and its commented GCP / on-premises variants) pass the checks `ray up` makes before it
contacts a cloud, and keep the cluster's security settings: token authentication on, the dashboard on
127.0.0.1 only, no extra inbound rules, Ray pinned to the version installed here.

What `ray up` runs offline (ray/autoscaler/_private/commands.py): create_or_update_cluster looks the
provider type up in _NODE_PROVIDERS, then _bootstrap_config calls prepare_config (merges the provider's
defaults.yaml, setup commands, per-type worker counts) and validate_config (ray-schema.json and the
node-type checks). Between the two it imports the provider and asks it to fill in node resources, and
afterwards provider.bootstrap_config sets up keys, roles and networks: for AWS and GCP those call the
cloud, so only the local (on-premises) variant goes through _bootstrap_config itself.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.commands import _bootstrap_config
from ray.autoscaler._private.providers import _NODE_PROVIDERS
from ray.autoscaler._private.util import prepare_config, validate_config

from okd_ray.engines.resources import PRELOAD

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
VARIANT = re.compile(r"^# --- variant: (?P<name>\S+) ---\n(?P<body>.*?)^# --- end ---$", re.M | re.S)


def variants(text: str) -> dict[str, str]:
    """The commented blocks, each without its leading '# ' (as the sed line in cluster.yaml does)."""
    blocks = {}
    for match in VARIANT.finditer(text):
        lines = match["body"].splitlines()
        assert all(line.startswith("#") for line in lines), f"variant {match['name']}: an uncommented line"
        blocks[match["name"]] = "\n".join(re.sub(r"^# ?", "", line) for line in lines) + "\n"
    return blocks


TEXT = CLUSTER_YAML.read_text()
SOURCES = {"aws": TEXT, **variants(TEXT)}


def load(name: str) -> dict:
    return yaml.safe_load(SOURCES[name])


def ray_up_checks(config: dict) -> dict:
    """The part of `ray up` that runs before any cloud call; returns the prepared config."""
    assert config["provider"]["type"] in _NODE_PROVIDERS
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def strings(obj) -> list[str]:
    if isinstance(obj, dict):
        return [s for value in obj.values() for s in strings(value)]
    if isinstance(obj, list):
        return [s for value in obj for s in strings(value)]
    return [obj] if isinstance(obj, str) else []


def ray_starts(prepared: dict) -> dict[str, list[str]]:
    """The `ray start` commands of the head's and the workers' start commands."""
    return {
        key: [c for c in strings(prepared[key]) if "ray start" in c]
        for key in ("head_start_ray_commands", "worker_start_ray_commands")
    }


def test_the_variants_are_there():
    assert set(SOURCES) == {"aws", "gcp", "local"}
    assert {name: load(name)["provider"]["type"] for name in SOURCES} == {"aws": "aws", "gcp": "gcp", "local": "local"}


@pytest.mark.parametrize("name", ["aws", "gcp", "local"])
def test_ray_up_accepts_it(name):
    prepared = ray_up_checks(load(name))
    for node_type in prepared["available_node_types"].values():
        assert "node_config" in node_type and "resources" in node_type


def test_local_variant_passes_the_whole_bootstrap():
    """The on-premises provider contacts nothing, so `ray up`'s own _bootstrap_config runs in full."""
    resolved = _bootstrap_config(load("local"), no_config_cache=True)
    node_type = resolved["available_node_types"][resolved["head_node_type"]]
    assert node_type["max_workers"] == len(resolved["provider"]["worker_ips"])


@pytest.mark.parametrize("name", ["aws", "gcp"])
def test_gpu_workers_scale_from_zero_and_the_head_trains_nothing(name):
    prepared = ray_up_checks(load(name))
    types = prepared["available_node_types"]
    head = types.pop(prepared["head_node_type"])
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    assert types and all(t["resources"]["GPU"] >= 1 and t["min_workers"] == 0 for t in types.values())
    assert all(t["max_workers"] <= prepared["max_workers"] for t in types.values())


def _no_node_config(config):
    del config["available_node_types"]["gpu_1x_a10g"]["node_config"]


def _no_resources(config):  # AWS fills them in from the cloud; offline, and on GCP, they must be given
    del config["available_node_types"]["head"]["resources"]


def _unknown_head(config):
    config["head_node_type"] = "gpu"


def _min_over_max(config):
    config["available_node_types"]["gpu_1x_a10g"]["min_workers"] = config["max_workers"] + 1


BROKEN = {
    "unknown top-level key": (lambda c: c.update(dashboard_host="0.0.0.0"), jsonschema.ValidationError),
    "node type without node_config": (_no_node_config, jsonschema.ValidationError),
    "node type without resources": (_no_resources, jsonschema.ValidationError),
    "misspelt provider key": (
        lambda c: c["provider"].update(security_group={"IpPermission": []}),
        jsonschema.ValidationError,
    ),
    "head type not among the types": (_unknown_head, ValueError),
    "min_workers above max_workers": (_min_over_max, ValueError),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_ray_up_rejects_a_broken_copy(case):
    breaks, error = BROKEN[case]
    config = load("aws")
    breaks(config)
    with pytest.raises(error):
        ray_up_checks(config)


@pytest.mark.parametrize("name", ["aws", "gcp", "local"])
def test_dashboard_listens_on_localhost_only(name):
    prepared = ray_up_checks(load(name))  # with the provider's defaults merged in
    commands = strings(prepared["head_start_ray_commands"]) + strings(prepared["worker_start_ray_commands"])
    head_start = ray_starts(prepared)["head_start_ray_commands"]
    assert len(head_start) == 1
    assert re.findall(r"--dashboard-host[= ](\S+)", head_start[0]) == ["127.0.0.1"]
    assert not [c for c in commands if "0.0.0.0" in c or "::" in c]
    assert "IpPermissions" not in prepared["provider"].get("security_group", {})


@pytest.mark.parametrize("name", ["aws", "gcp", "local"])
def test_token_authentication_stays_on(name):
    assert not re.search(r"RAY_AUTH_MODE\W*disabled", SOURCES[name], re.I)
    prepared = ray_up_checks(load(name))
    for key, starts in ray_starts(prepared).items():
        assert starts and all(re.search(r"\bRAY_AUTH_MODE=token\b[^;]*\bray start\b", c) for c in starts), key
    # Every node gets the one token (`ray up` stops before setting up the head where it was never generated).
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize("name", ["aws", "gcp", "local"])
def test_every_node_s_workers_preload_torch(name):
    for key, starts in ray_starts(ray_up_checks(load(name))).items():
        assert starts and all(re.search(rf"\b{PRELOAD}=torch\b[^;]*\bray start\b", c) for c in starts), key


def test_a_ray_that_okd_ray_starts_has_workers_that_preload_torch():
    """A task that imports nothing finds torch already imported in its worker (without the preload it is not:
    Ray's worker itself never imports torch)."""
    probe = (
        "import sys, ray; from okd_ray.engines import connect; connect('local', log_to_driver=False); "
        "print(ray.get(ray.remote(lambda: 'torch' in sys.modules).remote()))"
    )
    env = {k: v for k, v in os.environ.items() if k != PRELOAD}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"], done.stdout


@pytest.mark.parametrize("name", ["aws", "gcp", "local"])
def test_nodes_install_this_ray_and_this_project(name):
    prepared = ray_up_checks(load(name))
    for key in ("head_setup_commands", "worker_setup_commands"):
        setup = " ".join(strings(prepared[key]))
        pins = re.findall(r"\bray(?:\[[\w,]+\])?==([\w.]+)", setup)
        assert pins == [ray.__version__], f"{key}: ray pinned to {pins}, installed here: {ray.__version__}"
        assert re.search(r"\bray\[[\w,]*\bdefault\b", setup), "the dashboard and job API need ray[default]"
        assert "-e ~/okd-ray" in setup and "--python 3.11" in setup
    for remote, local in prepared["file_mounts"].items():
        if remote.startswith("~/okd-ray/"):
            assert (CLUSTER_YAML.parent / local).exists(), local

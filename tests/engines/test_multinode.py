"""A population across nodes: the session's real multi-node Ray cluster on one machine (a head without CPUs and
three 1-CPU worker nodes, each its own raylet), as ``ray up`` would give on machines."""

import json
import subprocess
import sys
import threading
import time

import pytest

from okd_ray.checkpoint import read_manifest
from okd_ray.engines import release_hosts
from okd_ray.errors import ConfigError
from okd_ray.run import train
from okd_ray.storage import RunStore

# afd+ffl: two members and the fusion, one whole CPU each, one part per node (test_ray.py's kill-and-resume
# population: one local run serves both).
POPULATION = [
    "epochs=3",
    "data.train_limit=160",
    "data.validation=20",
    "data.batch_size=32",
    "data.test_limit=64",
    "threads=1",
    "schedule={kind: multistep, milestones: [2]}",
    "method.name=afd+ffl",
    "engine=ray",
    "ray.placement=strict_spread",
    "ray.num_cpus_per_member=1",
    "ray.num_cpus_fusion=1",
]
LOCAL = tuple(POPULATION)  # the uninterrupted run every test here is compared with (local_runs runs it locally)


@pytest.fixture
def cluster(ray_cluster, ray_nodes):
    return ray_nodes


@pytest.fixture
def losing_a_node(cluster):
    """The session's cluster for a test that loses a node: no warm hosts of this process are on it before, and
    none that lived there are kept after (they die with their node)."""
    release_hosts()
    yield cluster
    release_hosts()


def on_cluster(tiny_config, cluster, *overrides):
    """Joined as ``--address`` would: a lost node's parts are waited for, not refused at once."""
    return tiny_config(*POPULATION, f"ray.address={cluster.address}", "ray.placement_timeout_s=30", *overrides)


def nodes_of(run_dir) -> dict[str, str]:
    placement = json.loads((run_dir / "placement.json").read_text())
    return {p["part"]: p["node"] for p in placement["parts"]}


@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_parts_on_different_nodes_equal_the_local_engine(
    cluster, tiny_config, tmp_path, population_state, same_state, local_runs, transport
):
    run = train(
        on_cluster(tiny_config, cluster, f"ray.transport={transport}"), run_dir=str(tmp_path / "ray"), quiet=True
    )
    nodes = nodes_of(tmp_path / "ray")
    assert len(set(nodes.values())) == 3  # m0, m1 and the fusion each on its own node
    assert cluster.head_node.node_id not in nodes.values()
    same_state(local_runs(LOCAL, tiny_config, population_state)[0], population_state(run.run_dir))


def test_replicas_across_nodes_equal_the_local_engine(
    cluster, tiny_config, tmp_path, population_state, same_state, local_runs
):
    """DML, two replicas a member, spread over the nodes: replicas gather their gradients from node to node."""
    replicated = (
        "method.name=dml",
        "members=[{arch: cnn16, replicas: 2}, {arch: cnn32, replicas: 2}]",
        "ray.placement=spread",
        "ray.num_cpus_per_member=0.5",
        "epochs=2",
    )
    run = train(
        on_cluster(tiny_config, cluster, *replicated, "ray.transport=collective"),
        run_dir=str(tmp_path / "ray"),
        quiet=True,
    )
    placement = json.loads((tmp_path / "ray" / "placement.json").read_text())["parts"]
    nodes = {(p["part"], p.get("replica", 0)): p["node"] for p in placement}
    assert any(nodes[(part, 0)] != nodes[(part, 1)] for part in ("m0:cnn16", "m1:cnn32"))
    same_state(local_runs((*LOCAL, *replicated), tiny_config, population_state)[0], population_state(run.run_dir))


def train_while_a_node_is_lost(cluster, config, run_dir, part: str, replace: bool, first_checkpoint):
    """Train in a thread; once the first checkpoint exists, remove the node that hosts ``part`` and, if
    ``replace``, add a new one (from this, the main thread: a raylet starts only there). Returns the run's
    result or error and the id of the removed node."""
    outcome = {}

    def run():
        try:
            outcome["result"] = train(config, run_dir=str(run_dir), quiet=True)
        except Exception as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    trainer = threading.Thread(target=run)
    trainer.start()
    first_checkpoint(run_dir)
    node_id = nodes_of(run_dir)[part]
    cluster.remove_node(next(n for n in cluster.worker_nodes if n.node_id == node_id))
    if replace:
        cluster.add_node(num_cpus=1)
    trainer.join()
    return outcome, node_id


@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_a_lost_node_replaced_by_a_new_one_ends_as_an_uninterrupted_run(
    losing_a_node, tiny_config, tmp_path, population_state, same_state, local_runs, first_checkpoint, transport
):
    cluster = losing_a_node
    outcome, removed = train_while_a_node_is_lost(
        cluster,
        on_cluster(tiny_config, cluster, f"ray.transport={transport}"),
        tmp_path / "lost",
        "m1:cnn32",
        replace=True,
        first_checkpoint=first_checkpoint,
    )
    result = outcome["result"]
    assert result.restarts == 1
    assert removed not in nodes_of(tmp_path / "lost").values()  # the rebuilt population found the new node
    same_state(local_runs(LOCAL, tiny_config, population_state)[0], population_state(result.run_dir))


def test_a_lost_node_without_replacement_is_a_clear_error_that_keeps_the_checkpoint(
    losing_a_node, tiny_config, tmp_path, first_checkpoint
):
    cluster = losing_a_node
    run_dir = tmp_path / "stranded"
    started = time.monotonic()
    try:
        outcome, _ = train_while_a_node_is_lost(
            cluster,
            on_cluster(tiny_config, cluster, "ray.placement_timeout_s=5"),
            run_dir,
            "fused",
            replace=False,
            first_checkpoint=first_checkpoint,
        )
    finally:
        cluster.add_node(num_cpus=1)  # as the module found it
    waited = time.monotonic() - started
    error = outcome["error"]
    assert isinstance(error, ConfigError)
    message = str(error)
    assert "could not place the population's parts" in message and "ray.placement_timeout_s=5" in message
    assert "'CPU': 1" in message and f"okd-ray train --resume {run_dir}" in message
    assert waited >= 5
    assert read_manifest(RunStore(str(run_dir))).latest.epoch >= 1


HEAD = """
import sys
from ray.cluster_utils import Cluster

head = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 2}, shutdown_at_exit=False)
print(head.address, flush=True)
sys.stdin.read()  # until the test closes it
head.head_node.kill_all_processes(check_alive=False, allow_graceful=False)
"""


def test_a_cluster_that_dies_mid_run_is_reported_at_once_with_what_was_kept(okd_ray, tmp_path, first_checkpoint):
    """A cluster of its own (the session's must live on), whose head's processes are all killed once the run has a
    checkpoint, as ``ray stop`` or a crashed head would: Ray itself would wait 60 s and end with one C++ line. The
    run ends within seconds, naming the checkpoint and the command that continues it, which does. The head is
    started and killed by a process of its own: a second cluster's node made in this one took over its Ray
    connection (the session cluster's GCS was 'killed' for this process once the test's head was)."""
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    run_dir = tmp_path / "run"
    try:
        address = head.stdout.readline().strip()
        process = okd_ray.start(
            "train",
            "engine=ray",
            "epochs=40",
            "data.train_limit=64",
            "data.test_limit=32",
            "data.batch_size=32",
            "--address",
            address,
            "--run-dir",
            run_dir,
            "--quiet",
        )
        first_checkpoint(run_dir)
        head.communicate("", timeout=60)  # its processes killed
        killed = time.monotonic()
        out, err = process.communicate(timeout=60)
    finally:
        head.kill()
    assert process.returncode == 2 and time.monotonic() - killed < 10, (process.returncode, err[-2000:])
    err = " ".join(err.split())
    assert f"error: the Ray cluster at {address} is gone" in err and "Traceback" not in err, err[-2000:]
    epoch = read_manifest(RunStore(str(run_dir))).latest.epoch
    assert f"the last checkpoint (epoch {epoch}) is kept" in err
    assert f"continue with: okd-ray train --resume {run_dir}" in err
    resumed = okd_ray.run("train", "--resume", run_dir, "engine=local", f"epochs={epoch + 1}", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_manifest(RunStore(str(run_dir))).latest.epoch == epoch + 1

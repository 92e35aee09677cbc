"""The Ray engine against the local one: the spine of the project."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from okd_ray.checkpoint import read_manifest
from okd_ray.config import dump_config
from okd_ray.engines.ray.collective import Collective
from okd_ray.engines.ray.direct import Direct, backend, on_one_gpu
from okd_ray.engines.ray.group import GROUP_TIMEOUT_S
from okd_ray.engines.ray.transport import auto_transport
from okd_ray.errors import ConfigError, OkdRayError
from okd_ray.run import train
from okd_ray.storage import KILL_AFTER, RunStore

# CIFAR-shaped images, each member its own augmentation of them (the digits have none to draw per member; and 96
# images of 100 classes have no stratified validation split)
OWN_AUGMENTATIONS = ["data.name=synthetic-cifar100", "data.augment_per_member=true", "data.validation=0"]
COMPILED = [
    "method.name=afd+ffl",
    "members=[{arch: cnn16}, {arch: cnn32}]",
    "data.validation=32",
    "data.test_batch_size=32",
]
POPULATIONS = {
    "afd-3-heterogeneous": ["method.name=afd", "members=[{arch: cnn16}, {arch: cnn32}, {arch: resnet8}]"],
    "ffl-3-heterogeneous": ["method.name=ffl", "members=[{arch: cnn16}, {arch: cnn32}, {arch: resnet8}]"],
    "afd+ffl": ["method.name=afd+ffl", "members=[{arch: cnn16}, {arch: resnet8}]"],
    # autocast to bf16 in every part: maps, logits and gradients cross in bf16
    "afd+ffl-bf16": ["method.name=afd+ffl", "members=[{arch: cnn16}, {arch: resnet8}]", "precision=bf16"],
    # torch.compile'd members, a transfer layer (cnn16's map to cnn32's channels; cnn32's own is an nn.Identity, left
    # uncompiled), discriminators and fusion, in channels_last: the Ray parts compile apart, the local engine's one
    # process compiles them all. Every batch of 32 images: one shape to compile.
    "afd+ffl-compiled-channels-last": [*COMPILED, "memory_format=channels_last", "compile=true"],
    "dml": ["method.name=dml"],
    "l1": ["method.name=l1", "members=[{arch: cnn16}, {arch: resnet8}]"],
    "kdcl-own-augmentations": ["method.name=kdcl", *OWN_AUGMENTATIONS],
    "one-on-a-trunk": [
        "method.name=one",
        "members=[{arch: resnet8}, {arch: resnet8}, {arch: resnet8}]",
        "trunk_stages=2",
    ],
    # two peers and the group leader on a trunk; the attention part sends gradients on maps and logits back
    "okddip-on-a-trunk": [
        "method.name=okddip",
        "members=[{arch: resnet8}, {arch: resnet8}, {arch: resnet8}]",
        "trunk_stages=2",
    ],
    # the peer ensemble's part, temporal means sent to the peers and evaluated as the members; the trunk runs
    # every peer's own augmentation and keeps its own temporal mean (a trunk hook), which it sends beside
    "pcl-on-a-trunk-own-augmentations": [
        "method.name=pcl",
        "members=[{arch: resnet8}, {arch: resnet8}, {arch: resnet8}]",
        "trunk_stages=2",
        *OWN_AUGMENTATIONS,
    ],
}
TRANSPORTS = ["compiled", "object_store", "direct", "collective"]
DEFAULT = "collective"  # what ray.transport=auto picks on CPUs
# A covering design: every population on the default transport, and on every other transport the populations
# whose messages are richest (bf16 maps, logits and gradients; a trunk's shared features, gate and gradients; a
# trunk hook's messages beside them and the peers' own streams). Replicas, below, share the transports out.
MESSAGE_RICH = ["afd+ffl-bf16", "one-on-a-trunk", "pcl-on-a-trunk-own-augmentations"]
# (compiled last: its actors are not kept for the next population, so the runs after it start cold)
EXACT = [(p, DEFAULT) for p in POPULATIONS] + [(p, t) for t in TRANSPORTS[::-1] if t != DEFAULT for p in MESSAGE_RICH]
# 2 epochs of 3 steps with a learning-rate milestone between them, 20 of the 96 images held out for validation;
# one torch thread in every part, as locally.
STEPS = [
    "epochs=2",
    "data.train_limit=96",
    "data.validation=20",
    "data.batch_size=32",
    "data.test_limit=64",
    "threads=1",
    "schedule={kind: multistep, milestones: [1]}",
]
TIMINGS = ("epoch_seconds", "elapsed_seconds")


def assert_same_rows(a, b):
    """Every metric of every epoch and part, timings aside, exactly."""
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)


# afd, ffl and dml, each with 2 and 3 replicas a member (and a fusion), the transports shared out among them
REPLICATED = [  # method, each member's replicas, transport, synchronised batch norm. The largest population first:
    # the hosts it leaves serve every population after it; compiled last (its hosts are not kept)
    ("ffl", (3, 3), "direct", False),
    ("afd", (2, 2), "object_store", False),
    ("afd", (3, 3), "collective", True),
    ("dml", (2, 2), "collective", False),
    ("dml", (3, 3), "object_store", True),
    ("vanilla", (2, 1), "object_store", False),  # counts may differ where nothing is exchanged (one gathers nothing)
    ("ffl", (2, 2), "compiled", False),
]


def replicated(method: str, replicas: tuple[int, int], sync: bool) -> tuple[str, ...]:
    """A heterogeneous pair, the members as ``replicas`` replicas (the fusion as the first's), for one epoch."""
    return (
        *STEPS,
        f"method.name={method}",
        "epochs=1",
        f"members=[{{arch: cnn16, replicas: {replicas[0]}}}, {{arch: resnet8, replicas: {replicas[1]}}}]",
        f"sync_batchnorm={str(sync).lower()}",
    )


@pytest.mark.parametrize(
    "method, replicas, transport, sync",
    REPLICATED,
    ids=[f"{m}-{'x'.join(map(str, d))}-{t}{'-sync' if s else ''}" for m, d, t, s in REPLICATED],
)
def test_replicas_on_ray_equal_the_local_engine(
    on_ray, tiny_config, tmp_path, population_state, same_state, local_runs, method, replicas, transport, sync
):
    """Each replica an actor of its own, gathering its gradients (and with sync, its batch statistics) through
    the population's process group."""
    state, rows = local_runs(replicated(method, replicas, sync), tiny_config, population_state)
    run = train(
        tiny_config(*replicated(method, replicas, sync), *on_ray, f"ray.transport={transport}"),
        run_dir=str(tmp_path / "ray"),
        quiet=True,
    )
    same_state(state, population_state(run.run_dir))
    assert_same_rows(rows, run.rows)
    assert {p.get("replica", 0) for p in run_placement(run.run_dir)} == set(range(max(replicas)))


def run_placement(run_dir) -> list[dict]:
    return json.loads((Path(run_dir) / "placement.json").read_text())["parts"]


@pytest.mark.parametrize("population, transport", EXACT, ids=[f"{p}-{t}" for p, t in EXACT])
def test_ray_engine_equals_local_engine_bit_for_bit(
    on_ray, tiny_config, tmp_path, population_state, same_state, local_runs, population, transport
):
    state, rows = local_runs((*STEPS, *POPULATIONS[population]), tiny_config, population_state)
    config = tiny_config(*STEPS, *POPULATIONS[population], *on_ray, f"ray.transport={transport}")
    run = train(config, run_dir=str(tmp_path / transport), quiet=True)
    same_state(state, population_state(run.run_dir))
    assert_same_rows(rows, run.rows)
    unscored = {"trunk"} | (
        {"fused"} if population.startswith("okddip") else set()
    )  # its attention part classifies nothing
    scores = ["test_top1"] + ([] if "data.validation=0" in POPULATIONS[population] else ["val_top1"])
    assert all(r[score] is not None for r in run.rows if r["kind"] not in unscored for score in scores)
    assert ("teacher" in {r["part"] for r in run.rows}) == (population == "one-on-a-trunk")  # ONE's gated teacher


def test_a_population_builds_in_the_hosts_the_one_before_left_and_nothing_of_that_one_reaches_it(
    on_ray, tiny_config, tmp_path, population_state, same_state, local_runs
):
    """Run A (bf16 maps and gradients, replicas gathering through a process group, collective's SPMD walk), then run
    B, DML on the object store: B's parts are built in A's hosts, and B ends bit for bit as its local run does."""
    a = (*replicated("afd", (2, 2), sync=False), "precision=bf16")
    b = (*STEPS, *POPULATIONS["dml"])
    train(tiny_config(*a, *on_ray, "ray.transport=collective"), run_dir=str(tmp_path / "a"), quiet=True)
    run = train(tiny_config(*b, *on_ray, "ray.transport=object_store"), run_dir=str(tmp_path / "b"), quiet=True)
    assert {p["host"] for p in run_placement(tmp_path / "b")} <= {p["host"] for p in run_placement(tmp_path / "a")}
    state, rows = local_runs(b, tiny_config, population_state)
    same_state(state, population_state(run.run_dir))
    assert_same_rows(rows, run.rows)


KILLED = (
    *STEPS,
    "epochs=3",
    "data.train_limit=160",
    "method.name=afd+ffl",
    "schedule={kind: multistep, milestones: [2]}",
)


def killed_population_file(tiny_config, folder) -> Path:
    """KILLED as a config file, for a command of its own (its local reference is the killed tests' one)."""
    path = folder / "population.yaml"
    path.write_text(dump_config(tiny_config(*KILLED)))
    return path


# compiled: in the test below, on one node (across nodes a lost part takes Ray's raylets down: ray#63229)
@pytest.mark.parametrize("transport, replicas", [(t, 1) for t in TRANSPORTS if t != "compiled"] + [("object_store", 2)])
def test_killed_member_actor_resumes_to_the_same_parameters(
    ray_cluster,
    on_ray,
    tiny_config,
    tmp_path,
    population_state,
    same_state,
    local_runs,
    first_checkpoint,
    transport,
    replicas,
):
    """Against the uninterrupted run of the local engine, which every transport equals (above). With replicas, the
    second replica of m1 is killed: the first, waiting for it in their gather, reports a lost peer."""
    population = KILLED
    if replicas > 1:  # DML, four actors: a replica's loss, as cheaply as it comes
        population += ("method.name=dml", "members=[{arch: cnn16, replicas: 2}, {arch: cnn32, replicas: 2}]")
    state, rows = local_runs(population, tiny_config, population_state)

    run_dir = tmp_path / "killed"
    killed = []

    def kill_member_after_first_checkpoint():
        first_checkpoint(run_dir)
        host = next(
            p["host"]
            for p in run_placement(run_dir)
            if p["part"].startswith("m1:") and p.get("replica", 0) == replicas - 1
        )
        ray_cluster.kill(ray_cluster.get_actor(host))
        killed.append(host)

    killer = threading.Thread(target=kill_member_after_first_checkpoint)
    killer.start()
    result = train(tiny_config(*population, *on_ray, f"ray.transport={transport}"), run_dir=str(run_dir), quiet=True)
    killer.join()
    assert killed and result.restarts == 1
    same_state(state, population_state(result.run_dir))
    assert_same_rows(rows, result.rows)


def test_a_driver_killed_before_its_manifest_names_the_parts_shards_resumes_to_the_same_parameters(
    okd_ray, cluster_address, on_ray, tiny_config, tmp_path, population_state, same_state, local_runs
):
    """test_kill_points.py on Ray, where it differs: the parts write their own shards, the driver the metrics and
    the manifest. The command SIGKILLs itself after its 15th file event: epoch 2's metrics in place, the parts'
    shards of epoch 2 written, the manifest's temporary file too, not yet moved into place (before: a write and a
    move each of placement.json, inputs.json, config.yaml, the manifest's record of it, epoch 1's metrics and
    manifest). The parts on the session's cluster count nothing: they do not inherit the command's environment.
    The other kill points are the run loop's own, as on the local engine."""
    state, _ = local_runs(KILLED, tiny_config, population_state)
    config = killed_population_file(tiny_config, tmp_path)
    run_dir, address = tmp_path / "run", ("--address", cluster_address, "--run-dir", tmp_path / "run", "--quiet")
    okd_ray.env[KILL_AFTER] = "15"
    killed = okd_ray.run("train", config, *on_ray, *address)
    del okd_ray.env[KILL_AFTER]
    assert killed.returncode == -9, killed.stderr[-2000:]
    store = RunStore(str(run_dir))
    assert read_manifest(store).latest.epoch == 1 and store.read_table("metrics.parquet")["epoch"].to_pylist()[-1] == 2
    assert len(list((run_dir / "checkpoints" / "epoch-0002").iterdir())) == 3  # m0's, m1's and the fusion's shards
    resumed = okd_ray.run("train", "--resume", run_dir, *address[:2], "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    same_state(state, population_state(str(run_dir)))


def test_a_compiled_graph_on_one_node_resumes_after_losing_a_part(
    okd_ray, tiny_config, tmp_path, population_state, same_state, local_runs, first_checkpoint
):
    """The compiled transport's recovery, on a one-node cluster of the command's own (no address): on several nodes a
    part lost mid-graph takes Ray's raylets down with it (ray#63229, open in Ray 2.60; the README says so), which the
    session's multi-node cluster would show instead. m1's host process is killed as the OOM killer would."""
    state, _ = local_runs(KILLED, tiny_config, population_state)
    config = killed_population_file(tiny_config, tmp_path)
    run_dir = tmp_path / "killed"
    okd_ray.env.pop("RAY_ADDRESS", None)
    process = okd_ray.start("train", config, "engine=ray", "ray.transport=compiled", "--run-dir", run_dir)
    first_checkpoint(run_dir)
    os.kill(next(p["pid"] for p in run_placement(run_dir) if p["part"].startswith("m1:")), signal.SIGKILL)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0 and "restart 1/" in out + err, err[-3000:]
    same_state(state, population_state(str(run_dir)))


def test_unmeetable_resources_are_a_clear_error(ray_cluster, tiny_config):
    config = tiny_config("engine=ray", "ray.num_gpus_per_member=4")
    with pytest.raises(ConfigError, match=r"needs 8 GPU .* the cluster has 0; set ray.num_gpus_per_member=0"):
        train(config, quiet=True)


def test_a_population_that_fails_to_start_gives_back_what_it_reserved(
    cluster_address, ray_cluster, tiny_config, tmp_path
):
    """Parts that cannot start (here a plugin that fails off the driver, as missing data on a worker would):
    the actors already started and the placement group are given back, so a retry or the next run can start."""
    plugin = tmp_path / "driver_only.py"
    plugin.write_text(f"import os\nif os.getpid() != {os.getpid()}:\n    raise RuntimeError('not on this worker')\n")
    with pytest.raises(OkdRayError, match="a population actor failed to start"):
        train(tiny_config("engine=ray", f"plugins=[{plugin}]", "ray.num_cpus_per_member=0.5"), quiet=True)
    deadline = time.monotonic() + 30
    while ray_cluster.available_resources().get("CPU") != ray_cluster.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, f"still held: {ray_cluster.available_resources()}"
        time.sleep(0.2)


def bundles(*gpus):
    return [{"CPU": 1, **({"GPU": g} if g else {})} for g in gpus]


def test_auto_transport_follows_what_was_measured():
    assert auto_transport(bundles(0, 0, 0)) == "collective"  # CPUs
    assert auto_transport(bundles(0.5, 0.5)) == "direct"  # parts sharing a GPU: CUDA IPC
    assert auto_transport(bundles(1, 1, 1)) == "direct"  # a GPU each: NCCL


def test_collective_on_a_shared_gpu_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"NCCL needs one whole GPU per part.*ray.num_gpus_fusion=1"):
        Collective.check(bundles(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="GPU shares are \\[1, 1, 0\\]"):
        Collective.check(bundles(1, 1, 0))  # the fusion on the CPU could not join an NCCL group
    Collective.check(bundles(0, 0, 0))  # gloo


def test_direct_picks_its_backend_by_the_parts_devices_and_refuses_what_none_serves():
    assert [backend(bundles(*g)) for g in [(0, 0), (1, 1, 1), (0.5, 0.5), (0.3, 0.3, 0.3)]] == [
        "gloo",
        "nccl",
        "cuda_ipc",
        "cuda_ipc",
    ]
    for fits in [(0, 0), (1, 1, 1), (0.5, 0.5), (0.3, 0.3, 0.3)]:
        Direct.check(bundles(*fits))
    with pytest.raises(ConfigError, match=r"a part on the CPU and one on a GPU share no direct transport"):
        Direct.check(bundles(0.5, 0.5, 0))
    with pytest.raises(
        ConfigError,
        match=r"CUDA IPC, which needs all of them on one GPU, and these sum to 1\.5\. "
        r"Give each part at most 1/3 of a GPU",
    ):
        Direct.check(bundles(0.5, 0.5, 0.5))


def test_cuda_ipc_needs_every_part_on_the_gpu_the_others_have():
    """Where Ray placed the parts, as each reports it (``PartHost.ready``)."""
    on_one_gpu([{"node": "n1", "gpus": ["0"]}, {"node": "n1", "gpus": ["0"]}])
    with pytest.raises(
        ConfigError,
        match=r"Ray gave them 2 different GPUs \(node n1 GPU 0, node n1 GPU 1\); use "
        r"ray.placement=pack",
    ):
        on_one_gpu([{"node": "n1", "gpus": ["0"]}, {"node": "n1", "gpus": ["1"]}])


FAILING_PLUGIN = """
from okd_ray.methods import CrossEntropy, Need, Term, register_method

class FailsOnM1(Term):
    name = "fails_on_m1"
    needs = frozenset({Need.RING_MAP})

    def __init__(self, settings, member):
        super().__init__(settings, member)
        self.index = member.index

    def loss(self, batch):
        if self.index == 1 and batch.step == 1:
            raise ValueError("a plugin's bug in m1 at its second step")
        return batch.ring_map.sum() * 0

register_method("fails-on-m1", [CrossEntropy, FailsOnM1])
"""


@pytest.fixture(scope="module")
def failing_plugin(plugin_file):
    return plugin_file("fails.py", FAILING_PLUGIN)


@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_a_part_that_fails_mid_epoch_gives_its_own_error_and_no_part_hangs(
    cluster_address, ray_cluster, on_ray, tiny_config, tmp_path, failing_plugin, transport
):
    """m1 raises in its second step while m0 goes on to wait for m1's ring message of the third; under
    ``collective`` m0 is blocked in a receive from a part that is alive but done. The driver reports m1's error,
    not a lost peer, and tears the population down at once."""
    config = tiny_config(
        *STEPS, f"plugins=[{failing_plugin}]", "method.name=fails-on-m1", *on_ray, f"ray.transport={transport}"
    )
    started = time.monotonic()
    with pytest.raises(Exception, match="a plugin's bug in m1 at its second step"):
        train(config, run_dir=str(tmp_path / "run"), quiet=True)
    assert time.monotonic() - started < GROUP_TIMEOUT_S / 2  # nothing waited for the group's timeout
    time.sleep(1)
    assert not [a for a in ray_cluster.util.list_named_actors() if a.startswith("okd-")]  # every part is gone (the
    # hosts of earlier tests were given back before this run: cluster_address)

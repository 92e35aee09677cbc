"""A run folder is consistent at every instant: the okd-ray command, SIGKILLed after each of its file events in
turn (every write, move into place and deletion of a 3-epoch run: inputs, config, manifest, metrics, shards, an
old checkpoint dropped), leaves a folder that ``--resume`` continues (or, killed before its config.yaml, one that a
new run takes), losing at most the epoch in progress; the continued run ends bit for bit where an uninterrupted
one does.

The kill comes from the process itself (``OKD_RAY_KILL_AFTER_FILE_EVENTS``, okd_ray/storage.py), so each point
is hit exactly. Every run is ``okd_ray.cli.main`` in a process of its own, forked from one that imported torch
and okd-ray once (RUNNER): about 60 runs in seconds instead of minutes of start-up."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from okd_ray.metrics import TIMINGS
from okd_ray.storage import KILL_AFTER

RUNNER = """
import json, os, sys
import okd_ray.run, sklearn.datasets, torch._dynamo  # noqa: F401 - imported once: every run below forks from here
from okd_ray.checkpoint import read_manifest
from okd_ray.cli import main
from okd_ray.storage import RunStore

def command(argv, env={}):
    pid = os.fork()
    if pid == 0:
        os.environ.update(env)
        code = main(argv)
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

args, root, kill_after = json.loads(sys.argv[1])
points = [{"reference": command(["train", *args, "--run-dir", f"{root}/reference"])}]
for n in range(1, 200):
    folder = f"{root}/kill-{n}"
    killed = command(["train", *args, "--run-dir", folder], {kill_after: str(n)})
    if killed == 0:  # the run has fewer file events than n: every one was a kill point
        break
    store = RunStore(folder)
    manifest = read_manifest(store) if store.exists("checkpoints/manifest.json") else None
    latest = manifest.latest if manifest is not None else None
    metrics = store.read_table("metrics.parquet").column("epoch").to_pylist() if store.exists("metrics.parquet") else []
    again = ["--resume", folder] if store.exists("config.yaml") else [*args, "--run-dir", folder]
    points.append({"n": n, "killed": killed, "checkpoint": latest.epoch if latest else 0,
                   "metrics": max(metrics, default=0), "continued": command(["train", *again])})
print(json.dumps(points))
"""

TINY = ["data.train_limit=64", "data.test_limit=32", "data.batch_size=32", "threads=1", "--quiet"]


@pytest.mark.parametrize("engine", ["local"])
def test_a_kill_at_any_file_event_loses_at_most_the_epoch_in_progress(
    tmp_path, okd_ray, population_state, same_state, engine
):
    args = ["epochs=3", f"engine={engine}", *TINY]
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps([args, str(tmp_path), KILL_AFTER])],
        cwd=tmp_path,
        env=okd_ray.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    reference, *points = json.loads(done.stdout.splitlines()[-1])
    assert reference == {"reference": 0}
    # 3 epochs: inputs.json, config.yaml and the manifest's record of it, metrics, two shards and the manifest in each
    # epoch, the first checkpoint's folder dropped in the third; each a temporary file written, then moved into place
    assert len(points) == 2 * (3 + 3 * 4) + 1, points
    expected = population_state(str(tmp_path / "reference"))
    for point in points:
        assert point["killed"] == -9 and point["continued"] == 0, point
        assert point["metrics"] - point["checkpoint"] <= 1, f"more than the epoch in progress was lost: {point}"
        folder = tmp_path / f"kill-{point['n']}"
        same_state(expected, population_state(str(folder)))
        assert rows(folder) == rows(tmp_path / "reference"), point
    # the kill points fell everywhere: before the first checkpoint, and between every two
    assert {p["checkpoint"] for p in points} == {0, 1, 2, 3}


def rows(folder):
    return pq.read_table(folder / "metrics.parquet").drop(TIMINGS).to_pylist()

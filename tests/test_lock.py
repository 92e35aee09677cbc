"""One writer per folder: a second okd-ray on a run or sweep folder in use is refused, naming the holder; a
lock left by a dead process is taken over. Real processes on real folders."""

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

from okd_ray.lock import LOCK, folder_lock
from okd_ray.storage import RunStore

TINY = ["data.train_limit=64", "data.test_limit=32", "data.batch_size=32"]
SWEEP = Path(__file__).parents[1] / "experiments" / "configs" / "tune-digits.yaml"
HOST = socket.gethostname()


def test_a_second_process_on_a_run_folder_in_use_is_refused_naming_the_first(tmp_path, okd_ray):
    folder = tmp_path / "run"
    first = okd_ray.start_until(
        folder / "checkpoints" / "manifest.json", "train", "epochs=100000", *TINY, "--run-dir", folder, "--quiet"
    )
    second = okd_ray.run("train", "--resume", folder, "--quiet")
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    okd_ray.assert_error(
        second,
        2,
        f"error: {folder} is in use by okd-ray pid {first.pid} on host {HOST}",
        f"one process writes a folder at a time; wait for it to end, or stop it (kill -INT {first.pid} on {HOST})",
    )
    assert first.returncode == 130 and not (folder / LOCK).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_message(tmp_path, okd_ray):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK).write_text(json.dumps({"pid": dead.pid, "host": HOST, "since": "2026-12-01T00:00:00"}))
    result = okd_ray.run("train", "epochs=1", *TINY, "--run-dir", folder, "--quiet")
    assert result.returncode == 0, result.stderr
    assert (
        f"warning: {folder}: took over the lock of okd-ray pid {dead.pid} on {HOST}, which is no longer running"
    ) in " ".join(result.stderr.split())
    assert (folder / "metrics.parquet").exists() and not (folder / LOCK).exists()


def test_a_lock_from_another_host_is_not_taken_over(tmp_path, okd_ray):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK).write_text(json.dumps({"pid": 4242, "host": "elsewhere", "since": "2026-12-01T00:00:00"}))
    okd_ray.assert_error(
        okd_ray.run("train", "epochs=1", *TINY, "--run-dir", folder, "--quiet"),
        2,
        f"{folder} is in use by okd-ray pid 4242 on host elsewhere (since 2026-12-01T00:00:00)",
        f"okd-ray cannot tell from here whether it still runs; if it does not, delete {folder / LOCK}",
    )
    assert sorted(p.name for p in folder.iterdir()) == [LOCK]


def test_a_sweep_folder_in_use_is_refused_and_kept_whole(tmp_path, okd_ray):
    import os

    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "trials.parquet").write_text("the live sweep's")
    with folder_lock(RunStore(str(folder)), print):  # this test's process is the live sweep
        result = okd_ray.run("tune", SWEEP, "--storage-path", tmp_path, "--name", "busy", "--overwrite", "--quiet")
    okd_ray.assert_error(result, 2, f"error: {folder} is in use by okd-ray pid {os.getpid()} on host {HOST}")
    assert (folder / "trials.parquet").read_text() == "the live sweep's"

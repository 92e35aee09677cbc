"""Real Tune sweeps (Optuna TPE, ASHA, PBT) on digits, resume, and the errors raised before any trial."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from okd_ray.cli import main
from okd_ray.config import load_config

SWEEP = Path(__file__).parents[2] / "experiments" / "configs" / "tune-digits.yaml"
SMALL = ["epochs=2", "data.train_limit=320", "data.test_limit=200", "data.batch_size=32"]


def tune_cli(capsys, *args):
    code = main(["tune", str(SWEEP), *SMALL, "--quiet", *args])
    return code, " ".join(capsys.readouterr().err.split())


def test_asha_sweep_writes_every_trial_and_a_best_config_that_trains(ray_cluster, capsys, tmp_path):
    code, err = tune_cli(
        capsys, "--num-samples", "5", "--max-concurrent", "1", "--scheduler", "asha",
        "--storage-path", str(tmp_path), "--name", "asha",
        # a wide learning-rate range makes some trials clearly worse, so ASHA has something to stop
        "--space", str(write_space(tmp_path, {"members.0.optimizer.lr": {"loguniform": [1e-4, 0.3]},
                                              "members.1.optimizer.lr": {"loguniform": [1e-4, 0.3]},
                                              "method.terms.ring_kl.weight": {"uniform": [0.0, 2.0]}})),
    )
    assert code == 0, err
    trials = pq.read_table(tmp_path / "asha" / "trials.parquet").to_pylist()
    assert len(trials) == 5 and all(t["status"] == "done" for t in trials)
    assert any(t["stopped_early"] for t in trials), [t["epochs"] for t in trials]
    assert all("config/method.terms.ring_kl.weight" in t and "mean_test_top1" in t for t in trials)
    best = max(trials, key=lambda t: t["mean_test_top1"])
    best_yaml = tmp_path / "asha" / "best_config.yaml"
    config = load_config(best_yaml)
    assert config.method.settings("ring_kl").weight == pytest.approx(best["config/method.terms.ring_kl.weight"])
    assert main(["train", str(best_yaml), f"output_dir={tmp_path / 'rerun'}", "--quiet"]) == 0


def write_space(folder, space):
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({"search": space}))
    return path


def test_trials_host_ray_engine_populations_in_their_placement_group(ray_cluster, capsys, tmp_path):
    """engine=ray in a trial: member and fusion actors go into the trial's bundles 1..K+1."""
    code, err = tune_cli(capsys, "epochs=1", "method.name=afd+ffl", "engine=ray", "--num-samples", "1",
                         "--scheduler", "none", "--storage-path", str(tmp_path), "--name", "ray")
    assert code == 0, err
    (trial,) = pq.read_table(tmp_path / "ray" / "trials.parquet").to_pylist()
    assert trial["status"] == "done" and trial["fused_test_top1"] > 0
    # Each part reported, from inside its actor, the placement group it runs in: the trial's, whose bundle 0
    # holds the trial itself; the members and the fusion take bundles 1..K+1.
    placement = json.loads((Path(trial["path"]) / "run" / "placement.json").read_text())
    parts = placement["parts"]
    assert [p["part"] for p in parts] == ["m0:cnn16", "m1:cnn32", "fused"]
    assert [p["bundle"] for p in parts] == [1, 2, 3]
    assert placement["driver_placement_group"] and all(
        p["placement_group"] == placement["driver_placement_group"] for p in parts)


def test_pbt_exploits_through_checkpoints(ray_cluster, capsys, tmp_path):
    code, err = tune_cli(
        capsys, "epochs=3", "--num-samples", "2", "--scheduler", "pbt", "--storage-path", str(tmp_path),
        "--name", "pbt",
        "--space", str(write_space(tmp_path, {"method.terms.ring_kl.weight": {"uniform": [0.0, 2.0]},
                                              "members.0.optimizer.lr": {"loguniform": [1e-4, 0.2]}})),
    )
    assert code == 0, err
    assert len(pq.read_table(tmp_path / "pbt" / "trials.parquet")) == 2
    # PBT's own log: [target trial, cloned trial, target iteration, clone iteration, old config, new config]
    log = tmp_path / "pbt" / "pbt_global.txt"
    assert log.exists(), "PBT performed no exploit"
    exploits = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert exploits and all(e[0] != e[1] and e[4] != e[5] for e in exploits)


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_cluster, tmp_path):
    address = ray_cluster.get_runtime_context().gcs_address
    # four trials of 3 full-digits epochs: slow enough that the interrupt lands mid-sweep
    args = [sys.executable, "-m", "okd_ray.cli", "tune", str(SWEEP), *SMALL, "epochs=3", "data.train_limit=1437",
            "--num-samples", "4",
            "--max-concurrent", "1", "--scheduler", "none", "--storage-path", str(tmp_path), "--name", "resume",
            "--address", address, "--quiet"]
    sweep = tmp_path / "resume"
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finished = wait_for_finished_trial(sweep, epochs=3, process=process)
    process.send_signal(signal.SIGINT)  # what Ctrl-C does: Tune saves the sweep's state and stops
    process.wait(timeout=120)
    before = {path.parent.name: path.read_text() for path in sweep.glob("*/result.json")}
    assert finished in before
    assert sum(lines(t) == 3 for t in before.values()) < 4, "interrupted too late"

    assert subprocess.run([*args, "--resume"], timeout=300).returncode == 0
    after = {path.parent.name: path.read_text() for path in sweep.glob("*/result.json")}
    # every trial reached its last epoch (an interrupted one re-runs what followed its last checkpoint)
    assert len(after) == 4 and all(last_epoch(text) == 3 for text in after.values())
    assert after[finished] == before[finished], "the finished trial was run again"


def last_epoch(text: str) -> int:
    return max(json.loads(line)["epoch"] for line in text.splitlines() if line.strip())


def lines(text: str) -> int:
    return len([line for line in text.splitlines() if line.strip()])


def wait_for_finished_trial(sweep: Path, epochs: int, process, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sweep.glob("*/result.json"):
            results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if len(results) == epochs:
                return path.parent.name
        assert process.poll() is None, "the sweep ended before any trial finished"
        time.sleep(0.05)
    raise AssertionError("no trial finished in time")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--space", "{space}"], "search.method.terms.ring_kl.wieght: the value 0.1 is not valid here"),
        (["--metric", "m7_test_top1"], "--metric m7_test_top1: no run of this config reports it; choose from"),
        (["--metric", "m0_test_top1,m1_test_top1"], "add --scheduler none"),
    ],
)
def test_bad_sweeps_fail_before_any_trial(capsys, tmp_path, args, expected):
    space = write_space(tmp_path, {"method.terms.ring_kl.wieght": {"loguniform": [0.1, 10]}})
    code, err = tune_cli(capsys, *[a.format(space=space) for a in args], "--storage-path", str(tmp_path / "s"))
    assert code == 2 and expected in err, err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "space, expected",
    [
        ({"method.terms.ring_kl.weight": {"uniform": [2.0, 1.0]}}, "uniform needs low < high"),
        ({"method.terms.ring_kl.weight": {"loguniform": [0.0, 1.0]}}, "loguniform needs low > 0"),
        ({"method.terms.ring_kl.weight": {"uniform": [-1.0, 1.0]}}, "search.method.terms.ring_kl.weight: the value -1.0 is not valid"),
        ({"method.terms.fused_kl.rampup_epochs": {"int": [3, 1]}}, "int needs integer bounds with low <= high"),
        ({"method.terms.ring_kl.temperature": {"choice": []}}, "choice needs a non-empty list"),
        ({"method.terms.ring_kl.temperature": {"normal": [0, 1]}}, "give one of uniform, loguniform, choice, int"),
    ],
)
def test_impossible_distributions_are_errors(capsys, tmp_path, space, expected):
    code, err = tune_cli(capsys, "--space", str(write_space(tmp_path, space)), "--storage-path", str(tmp_path / "s"))
    assert code == 2 and expected in err, err

"""Real Tune sweeps (Optuna TPE, ASHA, PBT) on digits, resume, and the errors raised before any trial."""

import json
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from okd_ray.cli import main
from okd_ray.config import load_config
from okd_ray.errors import Terminated
from okd_ray.report import make_report
from okd_ray.tune import SweepOptions, load_sweep_files, prepare
from okd_ray.tune.sweep import schedulers, sigterm_as_ctrl_c

SWEEP = Path(__file__).parents[2] / "experiments" / "configs" / "tune-digits.yaml"
SMALL = ["epochs=2", "data.train_limit=320", "data.test_limit=200", "data.batch_size=32"]


def tune_cli(capsys, *args):
    code = main(["tune", str(SWEEP), *SMALL, "--quiet", *args])
    return code, " ".join(capsys.readouterr().err.split())


def okd_ray_here(capsys, *args) -> subprocess.CompletedProcess:
    """``okd-ray ARGS`` in this process (a sweep's trials then join the session's cluster): its exit code and what
    it printed, as a subprocess would give them (``Command.assert_error`` reads them)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def test_asha_sweep_writes_every_trial_and_a_best_config_that_trains(ray_cluster, capsys, tmp_path):
    code, err = tune_cli(
        capsys,
        "logging=[mlflow]",
        "--num-samples",
        "5",
        "--max-concurrent",
        "1",
        "--scheduler",
        "asha",
        "--storage-path",
        str(tmp_path),
        "--name",
        "asha",
        # a wide learning-rate range makes some trials clearly worse, so ASHA has something to stop
        "--space",
        str(
            write_space(
                tmp_path,
                {
                    "members.0.optimizer.lr": {"loguniform": [1e-4, 0.3]},
                    "members.1.optimizer.lr": {"loguniform": [1e-4, 0.3]},
                    "method.terms.ring_kl.weight": {"uniform": [0.0, 2.0]},
                },
            )
        ),
    )
    assert code == 0, err
    trials = pq.read_table(tmp_path / "asha" / "trials.parquet").to_pylist()
    assert len(trials) == 5 and {t["status"] for t in trials} == {"done", "stopped"}, [t["epochs"] for t in trials]
    assert all(t["epochs"] < 2 for t in trials if t["status"] == "stopped")
    assert all("config/method.terms.ring_kl.weight" in t and "mean_val_top1" in t for t in trials)
    (best,) = [t for t in trials if t["best"]]
    # selected on the validation split (the default metric), never on the test set
    assert best["mean_val_top1"] == max(t["mean_val_top1"] for t in trials)
    best_yaml = tmp_path / "asha" / "best_config.yaml"
    config = load_config(best_yaml)
    assert config.method.settings("ring_kl").weight == pytest.approx(best["config/method.terms.ring_kl.weight"])
    # it keeps the trials' validation split out of training, and says what chose it
    assert config.data.validation == 0.1
    assert best_yaml.read_text().startswith(
        f"# Chosen by okd-ray tune: trial {best['trial_id']} of sweep "
        f"{tmp_path}/asha, best by mean_val_top1 (max) on the validation set"
    )
    assert main(["train", str(best_yaml), f"output_dir={tmp_path / 'rerun'}", "--quiet"]) == 0
    # Tune's epoch and the trial run's metrics.parquet count the same way, from 1
    run = Path(best["path"]) / "run"
    assert [json.loads(line)["epoch"] for line in (run.parent / "result.json").read_text().splitlines()] == [1, 2]
    assert sorted({r["epoch"] for r in pq.read_table(run / "metrics.parquet").to_pylist()}) == [1, 2]
    # logging: [mlflow]: Tune's MLflow callback gives every trial one run in the sweep's database, named after the
    # sweep, with its sampled values and every epoch's reported metrics; the trials' runs log none of their own
    client = MlflowClient(f"sqlite:///{tmp_path / 'asha' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("asha").experiment_id])
    by_lr = {float(r.data.params["members.0.optimizer.lr"]): r for r in runs}
    assert len(runs) == 5 and set(by_lr) == {t["config/members.0.optimizer.lr"] for t in trials}
    for t in trials:
        history = client.get_metric_history(by_lr[t["config/members.0.optimizer.lr"]].info.run_id, "mean_val_top1")
        assert len(history) == t["epochs"] and history[-1].value == t["mean_val_top1"]
    assert not list(tmp_path.glob("asha/*/run/mlflow.db"))


def write_space(folder, space):
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({"search": space}))
    return path


def test_trials_host_ray_engine_populations_in_their_placement_group(
    on_ray, capsys, tmp_path, population_state, same_state
):
    """engine=ray in a trial: member and fusion actors go into the trial's bundles 1..K+1. The second trial runs in
    the first one's process (Tune's reuse_actors) and so its placement group, and builds its parts in the hosts the
    first one left: and it ends bit for bit as its own config does on the local engine."""
    code, err = tune_cli(
        capsys,
        "epochs=1",
        "method.name=afd+ffl",
        *on_ray,
        "threads=1",
        "--num-samples",
        "2",
        "--max-concurrent",
        "1",
        "--scheduler",
        "none",
        "--storage-path",
        str(tmp_path),
        "--name",
        "ray",
    )
    assert code == 0, err
    trials = pq.read_table(tmp_path / "ray" / "trials.parquet").to_pylist()
    assert [t["status"] for t in trials] == ["done", "done"] and all(t["fused_test_top1"] > 0 for t in trials)
    # Each part reported, from inside its actor, the placement group it runs in: the trial's, whose bundle 0
    # holds the trial itself; the members and the fusion take bundles 1..K+1.
    first, second = (json.loads((Path(t["path"]) / "run" / "placement.json").read_text()) for t in trials)
    for placement in (first, second):
        parts = placement["parts"]
        assert [p["part"] for p in parts] == ["m0:cnn16", "m1:cnn32", "fused"]
        assert [p["bundle"] for p in parts] == [1, 2, 3]
        assert placement["driver_placement_group"] and all(
            p["placement_group"] == placement["driver_placement_group"] for p in parts
        )
    assert [p["host"] for p in second["parts"]] == [p["host"] for p in first["parts"]]
    run = Path(trials[1]["path"]) / "run"
    local = main(["train", str(run / "config.yaml"), "engine=local", "--run-dir", str(tmp_path / "local"), "--quiet"])
    assert local == 0
    same_state(population_state(str(run)), population_state(str(tmp_path / "local")))
    timings = ["epoch_seconds", "elapsed_seconds"]
    assert (
        pq.read_table(run / "metrics.parquet")
        .drop(timings)
        .equals(pq.read_table(tmp_path / "local" / "metrics.parquet").drop(timings))
    )


def test_pbt_exploits_through_checkpoints(ray_cluster, capsys, tmp_path):
    code, err = tune_cli(
        capsys,
        "epochs=3",
        "--num-samples",
        "2",
        "--scheduler",
        "pbt",
        "--storage-path",
        str(tmp_path),
        "--name",
        "pbt",
        "--space",
        str(
            write_space(
                tmp_path,
                {
                    "method.terms.ring_kl.weight": {"uniform": [0.0, 2.0]},
                    "members.0.optimizer.lr": {"loguniform": [1e-4, 0.2]},
                },
            )
        ),
    )
    assert code == 0, err
    assert len(pq.read_table(tmp_path / "pbt" / "trials.parquet")) == 2
    # PBT's own log: [target trial, cloned trial, target iteration, clone iteration, old config, new config]
    log = tmp_path / "pbt" / "pbt_global.txt"
    assert log.exists(), "PBT performed no exploit"
    exploits = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert exploits and all(e[0] != e[1] and e[4] != e[5] for e in exploits)


def test_sweep_stopped_by_sigterm_exits_143_with_its_resume_command_and_resumes_without_rerunning(
    cluster_address, tmp_path, okd_ray
):
    """SIGTERM (a scheduler's stop) goes through Tune's graceful Ctrl-C stop (sigterm_as_ctrl_c below): the same
    saved state, only the exit code differs."""
    address = cluster_address
    # three trials of 3 full-digits epochs, one at a time: once the first has finished, the interrupt lands mid-sweep
    args = [
        "tune",
        SWEEP,
        *SMALL,
        "epochs=3",
        "data.train_limit=1437",
        "--num-samples",
        "3",
        "--max-concurrent",
        "1",
        "--scheduler",
        "none",
        "--storage-path",
        tmp_path,
        "--name",
        "resume",
        "--address",
        address,
    ]
    sweep = tmp_path / "resume"
    process = okd_ray.start(*args)
    finished = wait_for_finished_trial(sweep, epochs=3, process=process)
    process.send_signal(signal.SIGTERM)  # handed to Tune's Ctrl-C handler: it saves the sweep's state and stops
    out, err = process.communicate(timeout=120)
    command = shlex.join(["okd-ray", *map(str, args), "--resume"])
    okd_ray.assert_error(
        subprocess.CompletedProcess(args, process.returncode, out, err),
        143,
        "sweep interrupted: ",
        f"continue with: {command}",
    )
    assert "Tuner.restore" not in out + err
    assert not (sweep / "best_config.yaml").exists(), "a best config from a partial sweep"
    assert "unfinished" in {t["status"] for t in pq.read_table(sweep / "trials.parquet").to_pylist()}
    before = {path.parent.name: path.read_text() for path in sweep.glob("*/result.json")}
    assert finished in before
    assert sum(lines(t) == 3 for t in before.values()) < 3, "interrupted too late"

    resumed = okd_ray.run(*shlex.split(command)[1:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = {path.parent.name: path.read_text() for path in sweep.glob("*/result.json")}
    # every trial reached its last epoch (an interrupted one re-runs what followed its last checkpoint)
    assert len(after) == 3 and all(last_epoch(text) == 3 for text in after.values())
    assert after[finished] == before[finished], "the finished trial was run again"
    (best,) = [t for t in pq.read_table(sweep / "trials.parquet").to_pylist() if t["best"]]
    assert f"best_config.yaml is the config of trial {best['trial_id']}" in " ".join(resumed.stdout.split())
    assert (sweep / "best_config.yaml").exists()


def test_a_sweep_killed_hard_resumes_from_its_own_files_and_never_trains_a_finished_trial_again(
    cluster_address, tmp_path, okd_ray
):
    """kill -9 of the sweep's process, with Tune's saved state as far behind as it gets (TUNE_GLOBAL_CHECKPOINT_S:
    saved once, at the start): search.yaml was written before the first trial, so --resume goes on as the sweep
    began, refuses other values, and the trial that finished is reported again from its run folder, not trained."""
    address = cluster_address
    space = write_space(tmp_path, {"members.0.optimizer.lr": {"loguniform": [1e-3, 0.1]}})
    args = [
        "tune",
        SWEEP,
        *SMALL,
        "epochs=1",
        "--space",
        space,
        "--num-samples",
        "2",
        "--max-concurrent",
        "1",
        "--scheduler",
        "none",
        "--storage-path",
        tmp_path,
        "--name",
        "k",
        "--address",
        address,
        "--quiet",
    ]
    sweep = tmp_path / "k"
    process = subprocess.Popen(
        okd_ray.argv(*args),
        cwd=tmp_path,
        env={**okd_ray.env, "TUNE_GLOBAL_CHECKPOINT_S": "1000"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = wait_for_finished_run(sweep, process)
    process.kill()
    process.communicate()
    kept = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    command = shlex.join(["okd-ray", *map(str, args), "--resume"])
    assert yaml.safe_load((sweep / "search.yaml").read_text())["command"] == command

    other = okd_ray.run(*shlex.split(command)[1:], "epochs=2", "--num-samples", "3")
    okd_ray.assert_error(
        other,
        2,
        f"--resume: sweep {sweep} began with other values (--num-samples is 2 there, 3 "
        "here; config: epochs is 1 there, 2 here). A sweep goes on as it began: continue it with "
        f"{command}, or start another sweep",
    )

    resumed = okd_ray.run(*shlex.split(command)[1:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == kept, (
        "the finished trial was trained again"
    )
    trials = pq.read_table(sweep / "trials.parquet").to_pylist()
    assert len(trials) == 2 and {t["status"] for t in trials} == {"done"}
    assert (sweep / "best_config.yaml").exists()
    # the report draws the loguniform key on a log axis: it reads the space from search.yaml
    report = make_report(str(sweep))
    (figure,) = report.images.values()
    assert figure.axes[0].get_xscale() == "log"


def test_a_sweep_prints_a_line_per_trial_event_not_tunes_tables(ray_cluster, tmp_path, okd_ray):
    """Without --quiet, Tune printed a box of every trial every 30 s and pointed TensorBoard into a folder of Ray's
    session; now a line per event, and TensorBoard at the sweep folder, where each trial's events are."""
    address = ray_cluster.get_runtime_context().gcs_address
    result = okd_ray.run(
        "tune",
        SWEEP,
        *SMALL,
        "epochs=1",
        "--num-samples",
        "1",
        "--scheduler",
        "none",
        "--storage-path",
        tmp_path,
        "--name",
        "p",
        "--address",
        address,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (trial,) = pq.read_table(tmp_path / "p" / "trials.parquet").to_pylist()
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"sweep p: 1 trials of 1 epochs into {tmp_path}/p, selecting on mean_val_top1; every trial's "
        f"curves: tensorboard --logdir {tmp_path}/p"
    )
    assert lines[1].startswith(f"trial {trial['trial_id']} started: weight=")
    assert lines[2:4] == [
        f"trial {trial['trial_id']} epoch 1/1: mean_val_top1 {trial['mean_val_top1']:.4g}",
        f"trial {trial['trial_id']} finished",
    ]
    assert not any(c in result.stdout for c in "╭│") and "/tmp/ray/session" not in result.stdout + result.stderr
    assert list((tmp_path / "p").glob("*/events.out.tfevents.*")), "no TensorBoard events where the line points"


def test_sigterm_during_a_sweep_goes_to_the_ctrl_c_handler_in_place_and_is_remembered():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))  # as Tune's graceful stop
    try:
        with sigterm_as_ctrl_c() as stopped:
            signal.raise_signal(signal.SIGTERM)
        assert seen == [signal.SIGINT] and stopped == {"signal": signal.SIGTERM}
        signal.signal(signal.SIGINT, signal.default_int_handler)  # what Tune's handler restores after one stop
        with pytest.raises(Terminated), sigterm_as_ctrl_c():
            signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_diverging_trials_are_not_retried_and_a_sweep_without_result_fails(ray_cluster, tmp_path, okd_ray, capsys):
    result = okd_ray_here(
        capsys,
        "tune",
        SWEEP,
        *SMALL,
        "epochs=1",
        "members.0.optimizer.lr=1e30",
        "--num-samples",
        "2",
        "--scheduler",
        "none",
        "--storage-path",
        tmp_path,
        "--name",
        "nan",
        "--quiet",
    )
    okd_ray.assert_error(
        result,
        1,
        f"no trial of sweep {tmp_path}/nan finished",
        "diverged: m0:cnn16",
        "make the diverging values less extreme",
    )
    assert "best_config.yaml" not in result.stdout and not (tmp_path / "nan" / "best_config.yaml").exists()
    trials = pq.read_table(tmp_path / "nan" / "trials.parquet").to_pylist()
    assert [t["status"] for t in trials] == ["diverged", "diverged"]
    for trial in (tmp_path / "nan").glob("run_trial_*"):  # one attempt each: Tune retried nothing
        assert lines((trial / "result.json").read_text()) == 1 and not (trial / "error.txt").exists()


FAILING_TERM = '''
from okd_ray.errors import DataError
from okd_ray.methods import CrossEntropy, Term, register_method


class Unreadable(Term):
    """Fails at the first step, as a data set whose files vanish mid-run would."""

    name = "unreadable"

    def loss(self, batch):
        raise DataError("plugin data: shard 3 vanished; put it back under data.root")


register_method("fails-in-trial", [CrossEntropy, Unreadable])
'''


def test_a_failed_trial_reports_its_okd_ray_error_as_it_was_raised(ray_cluster, tmp_path, okd_ray, capsys):
    """Taken from the error's fields, not parsed out of a traceback's last line."""
    plugin = tmp_path / "failing.py"
    plugin.write_text(FAILING_TERM)
    space = write_space(tmp_path, {"method.terms.ce.weight": {"uniform": [0.5, 1.0]}})
    result = okd_ray_here(
        capsys,
        "tune",
        SWEEP,
        *SMALL,
        "epochs=1",
        f"plugins=[{plugin}]",
        "method.name=fails-in-trial",
        "--space",
        space,
        "--num-samples",
        "1",
        "--scheduler",
        "none",
        "--storage-path",
        tmp_path,
        "--name",
        "data",
        "--quiet",
    )
    message = "plugin data: shard 3 vanished; put it back under data.root"
    okd_ray.assert_error(
        result,
        1,
        f"no trial of sweep {tmp_path}/data finished",
        f"error: {message})",
        "retry the failed trials with: okd-ray tune",
    )
    (trial,) = pq.read_table(tmp_path / "data" / "trials.parquet").to_pylist()
    assert (trial["status"], trial["message"]) == ("error", message)


def test_a_sweep_name_is_used_once_unless_resumed_or_overwritten(ray_cluster, tmp_path, okd_ray, capsys):
    args = [
        "tune",
        SWEEP,
        *SMALL,
        "epochs=1",
        "--num-samples",
        "1",
        "--scheduler",
        "none",
        "--storage-path",
        tmp_path,
        "--name",
        "once",
        "--quiet",
    ]
    first = okd_ray_here(capsys, *args)
    assert first.returncode == 0 and first.stderr == "", first.stderr[-3000:]
    # --quiet: the final table is all there is
    assert first.stdout.startswith("sweep once: 1 trials (* best by mean_val_top1, on the validation set)")
    assert "Checkpoint" not in first.stdout
    assert okd_ray_here(capsys, "report", tmp_path / "once").returncode == 0
    before = snapshot(tmp_path / "once")

    again = okd_ray_here(capsys, *args)
    okd_ray.assert_error(
        again,
        2,
        f"sweep folder {tmp_path}/once exists: continue that sweep with --resume, "
        "replace it with --overwrite, or give another --name",
    )
    assert snapshot(tmp_path / "once") == before

    replaced = okd_ray_here(capsys, *args, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert not (tmp_path / "once" / "report").exists(), "the old report outlived its sweep"
    assert len(pq.read_table(tmp_path / "once" / "trials.parquet")) == 1
    assert len(list((tmp_path / "once").glob("run_trial_*"))) == 1


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def last_epoch(text: str) -> int:
    return max(json.loads(line)["epoch"] for line in text.splitlines() if line.strip())


def lines(text: str) -> int:
    return len([line for line in text.splitlines() if line.strip()])


def wait_for_finished_run(sweep: Path, process, timeout: float = 180) -> Path:
    """The run folder of the first trial whose run has ended (its checkpoint written, its lock released): the
    trials write their runs straight into the sweep folder, while Tune copies its own files there later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in sweep.glob("*/run"):
            if (run / "checkpoints" / "epoch-0001").exists() and not (run / ".okd-ray.lock").exists():
                return run
        assert process.poll() is None, "the sweep ended before any trial finished"
        time.sleep(0.05)
    raise AssertionError("no trial finished in time")


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
        (["--metric", "m0_val_top1,m1_val_top1"], "add --scheduler none"),
        (
            ["--metric", "m0_test_top1"],
            "--metric m0_test_top1: selecting on the test set makes every tuned number "
            "optimistic. Select on the validation split held out of the training images instead: --metric m0_val_top1",
        ),
        (["data.validation=0"], "--metric mean_val_top1: data.validation=0 holds no images out of training"),
        (
            ["--space", "{inert}"],
            "search.method.terms.adversarial.weight: in the 'alternating' feature update, "
            "adversarial is the only loss that method.feature_update.optimizer (adam) steps on",
        ),
    ],
)
def test_bad_sweeps_fail_before_any_trial(capsys, tmp_path, args, expected):
    space = write_space(tmp_path, {"method.terms.ring_kl.wieght": {"loguniform": [0.1, 10]}})
    inert = tmp_path / "inert.yaml"
    inert.write_text(yaml.safe_dump({"search": {"method.terms.adversarial.weight": {"uniform": [0.0, 2.0]}}}))
    code, err = tune_cli(
        capsys, *[a.format(space=space, inert=inert) for a in args], "--storage-path", str(tmp_path / "s")
    )
    assert code == 2 and expected in err, err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "space, expected",
    [
        ({"method.terms.ring_kl.weight": {"uniform": [2.0, 1.0]}}, "uniform needs low < high"),
        ({"method.terms.ring_kl.weight": {"loguniform": [0.0, 1.0]}}, "loguniform needs low > 0"),
        (
            {"method.terms.ring_kl.weight": {"uniform": [-1.0, 1.0]}},
            "search.method.terms.ring_kl.weight: the value -1.0 is not valid",
        ),
        ({"method.terms.fused_kl.rampup_epochs": {"int": [3, 1]}}, "int needs integer bounds with low <= high"),
        ({"method.terms.ring_kl.temperature": {"choice": []}}, "choice needs a non-empty list"),
        ({"method.terms.ring_kl.temperature": {"normal": [0, 1]}}, "give one of uniform, loguniform, choice, int"),
    ],
)
def test_impossible_distributions_are_errors(capsys, tmp_path, space, expected):
    code, err = tune_cli(capsys, "--space", str(write_space(tmp_path, space)), "--storage-path", str(tmp_path / "s"))
    assert code == 2 and expected in err, err


def test_a_weight_that_acts_may_be_searched(capsys, tmp_path):
    """The same term's weight is a search key where it acts: in the joint update."""
    space = {"method.terms.adversarial.weight": {"uniform": [0.0, 2.0]}}
    sweep = prepare_sweep(["method.feature_update.mode=joint"], space)
    assert set(sweep.space) == {"method.terms.adversarial.weight"}


@pytest.mark.parametrize("scheduler", ["asha", "pbt"])
def test_schedulers_and_searcher_act_on_the_validation_metric(scheduler):
    sweep = prepare_sweep([], {"method.terms.ring_kl.weight": {"uniform": [0.0, 2.0]}}, scheduler=scheduler)
    trial_scheduler, searcher = schedulers(sweep)
    assert trial_scheduler.metric == "mean_val_top1" and trial_scheduler._mode == "max"
    assert searcher is None if scheduler == "pbt" else searcher.metric == "mean_val_top1"


def prepare_sweep(overrides, space, **options):
    raw, _ = load_sweep_files(str(SWEEP), [*SMALL, *overrides], None)
    return prepare(raw, space, SweepOptions(storage_path="/nonexistent/okd-ray-sweeps", **options))


def test_selection_on_the_test_set_only_when_asked_and_then_said_first(ray_cluster, tmp_path, capsys):
    result = okd_ray_here(
        capsys,
        "tune",
        SWEEP,
        *SMALL,
        "epochs=1",
        "--num-samples",
        "1",
        "--scheduler",
        "none",
        "--metric",
        "m0_test_top1",
        "--select-on-test",
        "--storage-path",
        tmp_path,
        "--name",
        "t",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    warning = "Selection was on the test set (--select-on-test)"
    assert result.stdout.startswith(warning)
    assert warning in (tmp_path / "t" / "best_config.yaml").read_text().splitlines()[1]
    assert okd_ray_here(capsys, "report", tmp_path / "t").returncode == 0
    assert (tmp_path / "t" / "report" / "report.md").read_text().startswith(f"**{warning}")

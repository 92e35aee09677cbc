"""A run folder holds one run: named after what ran, never mixed with another config, never left half-made,
and Ctrl-C says how to continue. The okd-ray command runs in a subprocess wherever exit codes matter."""

import contextlib
import os
import re
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest
import yaml

from okd_ray.checkpoint import MANIFEST, read_manifest
from okd_ray.cli import main
from okd_ray.errors import ConfigError
from okd_ray.run import resume, train
from okd_ray.storage import RunStore

TINY = ["data.train_limit=128", "data.test_limit=64", "data.batch_size=32"]


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_resume_with_another_method_is_one_clean_error_and_the_run_stays_whole(tiny_config, tmp_path, okd_ray):
    run = train(tiny_config("method.name=dml", "epochs=1", *TINY), run_dir=str(tmp_path / "run"), quiet=True)
    before = snapshot(tmp_path / "run")
    result = okd_ray.run("train", "--resume", run.run_dir, "method.name=ffl", "--quiet")
    okd_ray.assert_error(
        result,
        2,
        f"{run.run_dir} holds another run (method.name is 'dml' there, 'ffl' here;",
        f"start a new run: okd-ray train {run.run_dir}/config.yaml method.name=ffl",
    )
    assert snapshot(tmp_path / "run") == before, "a refused override changed the run folder"
    # a plain --resume still continues it, with a change the folder allows
    assert okd_ray.run("train", "--resume", run.run_dir, "epochs=2", "--quiet").returncode == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["epochs"] == 2
    assert [r["epoch"] for r in pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()][::3] == [1, 2]


@pytest.mark.parametrize(
    "args, named",
    [
        (["members.1.arch=resnet8"], "members.1.arch is 'cnn32' there, 'resnet8' here"),
        (["members=[{arch: cnn16}, {arch: cnn32}, {arch: cnn16}]"], "members.2.arch is absent there, 'cnn16' here"),
        (["data.train_limit=100"], "data.train_limit is 128 there, 100 here"),
        (["method.terms.peer_kl.weight=2"], "method.terms.peer_kl.weight is 1.0 there, 2.0 here"),
    ],
)
def test_resume_and_run_dir_refuse_a_changed_population(tiny_config, tmp_path, args, named):
    config = tiny_config("method.name=dml", "epochs=1", *TINY)
    run = train(config, run_dir=str(tmp_path / "run"), quiet=True)
    before = snapshot(tmp_path / "run")
    with pytest.raises(ConfigError, match=re.escape(named)):
        resume(run.run_dir, args, quiet=True)
    with pytest.raises(ConfigError, match=re.escape(named)):
        train(tiny_config("method.name=dml", "epochs=2", *TINY, *args), run_dir=run.run_dir, quiet=True)
    assert snapshot(tmp_path / "run") == before


def test_run_dir_on_a_run_of_another_method_is_refused(tiny_config, tmp_path):
    run = train(tiny_config("method.name=afd", "epochs=1"), run_dir=str(tmp_path / "run"), quiet=True)
    with pytest.raises(ConfigError, match="method.name is 'afd' there, 'dml' here"):
        train(tiny_config("method.name=dml", "epochs=2"), run_dir=run.run_dir, quiet=True)
    assert {r["method"] for r in RunStore(run.run_dir).read_table("metrics.parquet").to_pylist()} == {"afd"}


def test_folder_and_rows_are_named_after_what_ran(tmp_path, okd_ray):
    assert (
        okd_ray.run(
            "train", "method.name=ffl", "epochs=1", *TINY, f"output_dir={tmp_path / 'runs'}", "--quiet"
        ).returncode
        == 0
    )
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("digits-ffl-")
    rows = pq.read_table(folder / "metrics.parquet").to_pylist()
    assert {r["run"] for r in rows} == {"digits-ffl"} and {r["method"] for r in rows} == {"ffl"}


def test_epochs_count_from_one_in_metrics_and_a_resume_keeps_each_once(tiny_config, tmp_path):
    config = tiny_config("epochs=2")
    train(config, run_dir=str(tmp_path / "run"), quiet=True)
    rows = RunStore(str(tmp_path / "run")).read_table("metrics.parquet").to_pylist()
    assert sorted({r["epoch"] for r in rows}) == [1, 2]
    resumed = train(config.model_copy(update={"epochs": 3}), run_dir=str(tmp_path / "run"), quiet=True)
    epochs = [r["epoch"] for r in resumed.rows if r["part"] == "ensemble"]
    assert epochs == [1, 2, 3]


def test_a_failed_start_leaves_no_folder(ray_cluster, tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="num_gpus_per_member"):  # after the folder was locked
        train(
            tiny_config("engine=ray", "ray.num_gpus_per_member=4"), run_dir=str(tmp_path / "runs" / "run"), quiet=True
        )
    assert not (tmp_path / "runs").exists(), "the lock's folder, or a parent made for it, was left behind"


def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(tmp_path, okd_ray):
    folder = tmp_path / "run"
    process = okd_ray.start_until(
        folder / "checkpoints" / "epoch-0002",
        "train",
        "epochs=300",
        "data.train_limit=64",
        "data.test_limit=32",
        "--run-dir",
        folder,
        "--quiet",
    )  # epoch 1's is committed
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"is kept in {folder / MANIFEST}" in err and f"continue with: okd-ray train --resume {folder}" in err
    done = read_manifest(RunStore(str(folder))).latest.epoch
    assert done < 300, "interrupted too late"

    resumed = okd_ray.run("train", "--resume", folder, f"epochs={done + 1}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {folder} after epoch {done}" in resumed.stdout
    assert read_manifest(RunStore(str(folder))).latest.epoch == done + 1


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_epoch_one(tmp_path, okd_ray):
    """With checkpoint_every > 1 the first epochs have metrics but no checkpoint: Ctrl-C there says so, and the
    command it prints continues the folder (it was refused)."""
    folder = tmp_path / "run"
    process = okd_ray.start_until(
        folder / "metrics.parquet",
        "train",
        "epochs=300",
        "checkpoint_every=1000",
        "data.train_limit=64",
        "data.test_limit=32",
        "--run-dir",
        folder,
        "--quiet",
    )
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert " ".join(err.split()) == (
        f"interrupted; no checkpoint had been written yet (a resume starts from epoch 1);"
        f" continue with: okd-ray train --resume {folder}"
    )
    held = max(pq.read_table(folder / "metrics.parquet").column("epoch").to_pylist())

    resumed = okd_ray.run("train", "--resume", folder, "epochs=1")
    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"resuming {folder} from epoch 1, as it stopped before its first checkpoint (epochs 1 to {held} in "
        "metrics.parquet are trained again)"
    ) in " ".join(resumed.stdout.split())
    assert read_manifest(RunStore(str(folder))).latest.epoch == 1
    assert {r["epoch"] for r in pq.read_table(folder / "metrics.parquet").to_pylist()} == {1}


def test_an_edited_config_yaml_is_refused_naming_the_key_and_both_values(tiny_config, tmp_path, okd_ray):
    """The manifest records the config the checkpoints were trained with: an edit of config.yaml (the file --resume
    reads) would otherwise mix two configs in one folder without a word."""
    run = train(tiny_config("epochs=1", *TINY), run_dir=str(tmp_path / "run"), quiet=True)
    config = tmp_path / "run" / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.05", "lr: 0.5", 1))
    before = snapshot(tmp_path / "run")
    okd_ray.assert_error(
        okd_ray.run("train", "--resume", run.run_dir, "epochs=2", "--quiet"),
        2,
        f"error: {config} was edited after its run began (members.0.optimizer.lr is 0.05 in the config the "
        "checkpoints were trained with (checkpoints/manifest.json), 0.5 now). A run folder holds one run: put the "
        f"values back to continue it, or train the edited config as a new run: okd-ray train {config}",
    )
    assert snapshot(tmp_path / "run") == before
    # what a run may change as it goes on (its length) may be edited there too
    config.write_text(config.read_text().replace("lr: 0.5", "lr: 0.05", 1).replace("epochs: 1", "epochs: 2"))
    assert [r["epoch"] for r in resume(run.run_dir, quiet=True).rows][::3] == [1, 2]


def test_resuming_a_finished_run_says_so_and_starts_nothing(tiny_config, tmp_path, capsys):
    run = train(tiny_config("epochs=1", *TINY), run_dir=str(tmp_path / "run"), quiet=True)
    before = snapshot(tmp_path / "run")
    assert main(["train", "--resume", run.run_dir]) == 0
    assert (
        f"{run.run_dir} has finished: its last checkpoint holds all 1 epochs (epochs=1), so there is nothing "
        f"to train. To train it longer: okd-ray train --resume {run.run_dir} epochs=N, with N > 1"
    ) in " ".join(capsys.readouterr().out.split())
    assert snapshot(tmp_path / "run") == before


@contextlib.contextmanager
def read_only(folder):
    """``folder`` and every folder in it may not be written: chmod, or for root (whom chmod does not stop) the
    immutable attribute."""
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    if os.geteuid():
        for f in folders:
            f.chmod(0o555)
    elif subprocess.run(["chattr", "+i", *folders], capture_output=True).returncode:
        pytest.skip("this file system cannot make a folder read-only for root (chattr +i)")
    try:
        yield
    finally:
        if os.geteuid():
            for f in folders:
                f.chmod(0o755)
        else:
            subprocess.run(["chattr", "-i", *folders], check=True)


def test_a_read_only_folder_is_one_error_naming_it_for_resume_and_report(tiny_config, tmp_path, okd_ray):
    folder = tmp_path / "run"
    train(tiny_config("epochs=1", *TINY), run_dir=str(folder), quiet=True)
    before = snapshot(folder)
    with read_only(folder):
        resumed = okd_ray.run("train", "--resume", folder, "epochs=2", "--quiet")
        reported = okd_ray.run("report", folder)
    fix = f"make {folder} writable, or copy it to a folder you may write and give the copy"
    okd_ray.assert_error(resumed, 2, f"error: cannot write {folder}/.okd-ray.lock (", fix)
    okd_ray.assert_error(reported, 2, f"error: cannot write {folder}/report/report.md (", fix)
    assert snapshot(folder) == before


def test_sigterm_stops_a_ray_run_like_ctrl_c_with_exit_code_143(tmp_path, okd_ray):
    """engine=ray: ray.init replaces the SIGTERM handler with a plain exit; okd-ray's must survive it."""
    folder = tmp_path / "run"
    process = okd_ray.start_until(
        folder / "checkpoints" / "epoch-0002",
        "train",
        "engine=ray",
        "epochs=300",
        "data.train_limit=64",
        "data.test_limit=32",
        "--run-dir",
        folder,
        "--quiet",
        timeout=180,
    )  # epoch 1's checkpoint is committed
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    last = err.strip().splitlines()[-1]  # the lines before it, if any, are Ray's own start-up notes
    assert "Traceback" not in err and last.startswith("interrupted; "), err
    assert f"is kept in {folder / MANIFEST}" in last and f"continue with: okd-ray train --resume {folder}" in last
    assert read_manifest(RunStore(str(folder))).latest.epoch < 300, "stopped too late"
    assert not (folder / ".okd-ray.lock").exists()


HANGS = """
import time
from pathlib import Path

from okd_ray.methods import CrossEntropy, Term, register_method


class Hangs(Term):
    \"\"\"Never returns from its second step, as a plugin's loss stuck on a lock would.\"\"\"

    name = "hangs"

    def loss(self, batch):
        if batch.step == 1:
            Path(__file__).with_suffix(".hanging").touch()
            time.sleep(3600)
        return batch.logits.sum() * 0


register_method("hangs", [CrossEntropy, Hangs])
"""


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_part_that_hangs_is_reported_by_name_and_sigterm_then_exits_143(tmp_path, okd_ray, engine):
    """The part's process says which part has not returned from which call (on Ray, the host's stderr shown by
    the driver). On Ray the driver waits inside Ray, which hands SIGTERM's interrupt back as a plain
    KeyboardInterrupt: that had made its exit code Ctrl-C's (130)."""
    plugin = tmp_path / "hangs.py"
    plugin.write_text(HANGS)
    process = okd_ray.start_until(
        plugin.with_suffix(".hanging"),
        "train",
        f"plugins=[{plugin}]",
        "method.name=hangs",
        f"engine={engine}",
        "epochs=1",
        "data.train_limit=64",
        "data.test_limit=32",
        "data.batch_size=16",
        "silent_part_s=1",
        "--run-dir",
        tmp_path / "run",
        "--quiet",
        timeout=180,
    )
    reported = re.compile(r"okd-ray: m0:cnn16 has run update\(\) for [0-9]+ s without returning \(silent_part_s=1\)")
    deadline = time.monotonic() + 30
    while not reported.search(process.stderr.path.read_text()):
        assert time.monotonic() < deadline, process.stderr.path.read_text()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    own = [line for line in err.strip().splitlines() if "(PartHost pid=" not in line]  # hosts' lines come late
    assert "Traceback" not in err and own[-1].startswith("interrupted"), err

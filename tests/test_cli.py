"""The okd-ray command: bad input gets a clear error that names the fix, before any work starts."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from okd_ray.cli import main, split_config_and_overrides

SWEEP = Path(__file__).parents[1] / "experiments" / "configs" / "tune-digits.yaml"


def run_cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, " ".join(out.err.split())


@pytest.mark.parametrize(
    "args, expected",
    [
        (["members.0.arch=resnet9000"], ["members.0.arch", "resnet9000", "resnet32", "wrn-16-2", "cnn16", "tv:"]),
        (["method.name=kd"], ["method.name", "did you mean kdcl? valid: vanilla, dml, l1, l2, afd, ffl, afd+ffl"]),
        (["data.name=mnist"], ["mnist", "digits", "fashion-mnist", "cifar10", "cifar100", "imagefolder"]),
        (["data.name=cifar100", "data.root=/nonexistent/cifar"], ["/nonexistent/cifar", "data.download=true"]),
        (["method.name=ffl", "members=[{arch: cnn16}]"], ["needs at least 2 members", "method.name=vanilla"]),
        (["method.transfer.learn=false"], ["method.transfer.learn", "set method.transfer.learn=true"]),
        (["missing.yaml"], ["missing.yaml", "not found"]),
        (["epochs=-1"], ["epochs", "greater than or equal to 1"]),
        (["epoch=3"], ["epoch: unknown key; did you mean epochs?"]),
        (["members.1.arch=tv:resnet_nope"], ["members.1.arch: unknown torchvision", "'resnet_nope'", "resnet18"]),
        (["search={method.kl_weight: {uniform: [0, 1]}}"], ["the search space is no override"]),
    ],
)
def test_bad_input_is_a_clear_error(capsys, tmp_path, args, expected):
    code, out, err = run_cli(capsys, "train", *args, f"output_dir={tmp_path}", "--quiet")
    assert code == 2
    for text in expected:
        assert text in err, (text, err)
    assert not list(tmp_path.iterdir()), "no run folder may be created for a bad config"


def test_train_runs_and_writes_its_folder(capsys, tmp_path):
    code, out, err = run_cli(
        capsys,
        "train",
        "epochs=1",
        "data.train_limit=128",
        "data.test_limit=64",
        f"output_dir={tmp_path}",
    )
    assert code == 0, err
    (run_dir,) = list(tmp_path.iterdir())
    assert {"config.yaml", "metrics.parquet", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    assert "m0:cnn16" in out and "test@1" in out


def test_names_print_as_they_are(capsys, tmp_path):
    """rich would print m1:tv:resnet18 as m1📺resnet18 (and take [...] for markup)."""
    code, out, err = run_cli(
        capsys,
        "train",
        "members.1.arch=tv:resnet18",
        "epochs=1",
        "data.train_limit=64",
        "data.test_limit=32",
        "data.batch_size=32",
        f"output_dir={tmp_path}",
    )
    assert code == 0, err
    assert "m1:tv:resnet18" in out and "📺" not in out


@pytest.mark.parametrize(
    "args, files, expected",
    [
        (
            ["train", "bad.yaml"],
            {"bad.yaml": "epochs: 2\nmembers: [{arch: cnn16}\n"},
            ["bad.yaml, line 3, column 1: YAML syntax error", "from line 2, column 10", "fix the YAML there"],
        ),
        (
            ["tune", SWEEP, "--space", "space.yaml"],
            {"space.yaml": "search:\n  method.kl_weight: {uniform: [0, 1]\n"},
            ["space.yaml, line 3, column 1: YAML syntax error", "fix the YAML there"],
        ),
        (
            ["train", "members=[{arch: cnn16"],
            {},
            [
                "the value of override 'members=[{arch: cnn16', line 1, column 14: YAML syntax error",
                "close its brackets",
            ],
        ),
    ],
    ids=["config", "space", "override"],
)
def test_yaml_syntax_errors_name_the_file_and_line_without_a_traceback(okd_ray, tmp_path, args, files, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    okd_ray.assert_error(okd_ray.run(*args), 2, *expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files), "an error wrote something"


@pytest.mark.parametrize("command", ["train", "tune"])
def test_an_unreachable_cluster_fails_at_once_naming_the_address(okd_ray, tmp_path, command):
    args = (
        ["train", "engine=ray", f"output_dir={tmp_path / 'runs'}"]
        if command == "train"
        else ["tune", SWEEP, "engine=ray", "--storage-path", tmp_path / "runs"]
    )
    started = time.monotonic()
    result = okd_ray.run(*args, "--address", "127.0.0.1:1", "--quiet", timeout=120)
    okd_ray.assert_error(
        result,
        2,
        "error: cannot reach a Ray cluster at 127.0.0.1:1 (Connection refused); "
        "check --address (ray.address) and that the cluster runs: `ray status` on its head node",
    )
    assert time.monotonic() - started < 30, "Ray's own retries took over"
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def token_cluster():
    """A real cluster as a user starts one, with Ray's token authentication (``RAY_AUTH_MODE=token ray start
    --head``); its address. ``--block`` keeps ``ray start`` in the foreground, and stopping it stops the cluster."""
    folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head = subprocess.Popen(
        [
            Path(sys.executable).parent / "ray",
            "start",
            "--head",
            "--block",
            "--port",
            str(port),
            "--temp-dir",
            folder,
            "--num-cpus",
            "1",
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
        ],
        env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "a" * 32},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while subprocess.run(
        [Path(sys.executable).parent / "ray", "status", "--address", f"127.0.0.1:{port}"],
        capture_output=True,
        env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "a" * 32},
    ).returncode:
        assert head.poll() is None and time.monotonic() < deadline, "ray start did not come up"
        time.sleep(1)
    yield f"127.0.0.1:{port}"
    head.terminate()
    head.wait(timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    "client, sent",
    [
        ({}, "this process sends none: RAY_AUTH_MODE is unset"),
        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "b" * 32}, "the token it sends was refused"),
    ],
    ids=["no-token", "another-token"],
)
def test_a_cluster_that_refuses_the_token_is_one_error_at_once_saying_what_to_set(
    token_cluster, okd_ray, tmp_path, client, sent
):
    """Ray itself retries for 20 s, a line a second, then calls the cluster unreachable (check --address)."""
    env = {k: v for k, v in okd_ray.env.items() if not k.startswith("RAY_AUTH")}
    started = time.monotonic()
    result = subprocess.run(
        okd_ray.argv("train", "engine=ray", f"output_dir={tmp_path / 'runs'}", "--address", token_cluster, "--quiet"),
        cwd=tmp_path,
        env={**env, **client},
        capture_output=True,
        text=True,
        timeout=120,
    )
    okd_ray.assert_error(
        result,
        2,
        f"error: the Ray cluster at {token_cluster} requires its authentication token "
        f"(it runs with RAY_AUTH_MODE=token) and {sent}. Set RAY_AUTH_MODE=token and give the "
        "cluster's token: in ~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH",
    )
    assert "InvalidAuthToken" not in result.stderr and time.monotonic() - started < 20
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["members=[{arch: cnn16, replicas: 1000}, {arch: cnn32, replicas: 1000}]", "engine=local"],
            "members.0.replicas=1000: each replica takes a share of every batch, and data.batch_size=64 has only 64 "
            "images to share; give members.0.replicas=64 or fewer, or a data.batch_size of 1000 or more",
        ),
        (
            ["members=[{arch: cnn16, replicas: 1000}, {arch: cnn32, replicas: 1000}]", "engine=ray"],
            "members.0.replicas=1000: each replica takes a share of every batch",
        ),
        (
            [
                "members=[{arch: cnn16, replicas: 2}, {arch: cnn32, replicas: 2}]",
                "data.train_limit=33",
                "data.batch_size=16",
            ],
            "members.0.replicas=2: the last batch of every epoch holds 1 image(s) (33 training images in batches of "
            "data.batch_size=16), too few for a share per replica: a replica's share would be empty. Give a "
            "data.batch_size that leaves at least 2 (data.batch_size=15), or another data.train_limit",
        ),
    ],
    ids=["above-the-batch", "above-the-batch-ray", "an-empty-last-share"],
)
def test_replicas_a_batch_cannot_share_out_are_refused_before_anything_starts(okd_ray, tmp_path, args, expected):
    """1000 replicas hung for minutes (Ray: then a C++ abort); an empty share made a NaN loss, blamed on the
    learning rate."""
    result = okd_ray.run("train", *args, f"output_dir={tmp_path / 'runs'}", "--quiet", timeout=120)
    okd_ray.assert_error(result, 2, f"error: {expected}")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("run", [False, True], ids=["a-folder", "a-run-folder"])
def test_a_config_path_that_is_a_folder_says_so(okd_ray, tmp_path, run):
    folder = tmp_path / "configs"
    folder.mkdir()
    if run:
        (folder / "config.yaml").write_text("epochs: 1\n")
    fix = (
        f"to continue the run it holds: okd-ray train --resume {folder}; to train its config as a new run, give "
        f"{folder}/config.yaml"
        if run
        else "give a YAML path, or none for the embedded default"
    )
    okd_ray.assert_error(
        okd_ray.run("train", folder, "--quiet"), 2, f"error: config file '{folder}' is a folder; {fix}"
    )


def test_version(okd_ray):
    from okd_ray import __version__

    result = okd_ray.run("--version")
    assert (result.returncode, result.stdout) == (0, f"okd-ray {__version__}\n")


def test_without_a_terminal_a_line_comes_as_the_run_starts_and_epoch_lines_fit_80_columns(okd_ray, tmp_path):
    """Piped, there is no progress bar: the first line used to come when epoch 1 ended. FFL with a validation
    split makes the longest epoch lines (two splits of four parts each), which wrapped at 80 columns."""
    folder = tmp_path / "run"
    process = okd_ray.start(
        "train",
        "method.name=ffl",
        "data.validation=0.1",
        "epochs=2",
        "data.batch_size=8",
        "data.train_limit=400",
        "data.test_limit=64",
        "--run-dir",
        folder,
    )
    first = process.stdout.readline()
    assert first.startswith(f"training digits-ffl into {folder}: epochs=2, 45 steps each, engine=local"), first
    assert not (folder / "metrics.parquet").exists(), "the first line came after epoch 1 ended"
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    lines = [first, *out.splitlines()]
    epoch = lines.index(next(line for line in lines if line.startswith("epoch 1/2")))
    assert lines[epoch + 1].startswith("  val top-1: m0:cnn16 ") and "fused" in lines[epoch + 1]
    assert lines[epoch + 2].startswith("  test top-1: m0:cnn16 ") and "ensemble" in lines[epoch + 2]
    assert max(len(line.rstrip()) for line in lines[1:]) <= 80, out


def test_an_output_dir_that_cannot_be_made_is_one_error_naming_it(okd_ray):
    okd_ray.assert_error(
        okd_ray.run("train", "output_dir=/proc/okd", "--quiet"),
        2,
        "error: cannot create the folder /proc/okd/digits-afd-",
        "give a folder you may write: output_dir=... or --run-dir for okd-ray train",
    )


def test_an_output_uri_that_cannot_be_opened_is_one_error_naming_it(okd_ray):
    okd_ray.assert_error(
        okd_ray.run("train", "output_dir=nosuch://bucket/runs", "--quiet"),
        2,
        "error: cannot open nosuch://bucket/runs/digits-afd-",
        "Unrecognized filesystem type",
        "check the URI, your credentials and the network, or give a local folder",
    )


def test_a_config_path_may_hold_an_equals_sign():
    """Tune names a trial's folder after its values (``..._lr=0.0008,...``): its config.yaml is still a config."""
    config = "runs/tune/run_trial_1_lr=0.0008,weight=2/run/config.yaml"
    assert split_config_and_overrides([config, "epochs=3", "members.0.arch=cnn16"]) == (
        config,
        ["epochs=3", "members.0.arch=cnn16"],
    )

"""The okd-ray command: bad input gets a clear error that names the fix, before any work starts."""

import pytest

from okd_ray.cli import main


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
        capsys, "train", "epochs=1", "data.train_limit=128", "data.test_limit=64", f"output_dir={tmp_path}",
    )
    assert code == 0, err
    (run_dir,) = list(tmp_path.iterdir())
    assert {"config.yaml", "metrics.parquet", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    assert "m0:cnn16" in out and "test@1" in out

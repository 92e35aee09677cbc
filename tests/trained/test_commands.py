"""The okd-ray command: train, eval and export a run end to end, and bad input as one message with exit code 2."""

import importlib.util
import re
import shutil

import pyarrow.parquet as pq
import pytest
import torch

from okd_ray import load_model
from okd_ray.cli import main

TINY = ["epochs=2", "data.train_limit=64", "data.test_limit=64", "data.batch_size=32"]


def test_train_then_eval_prints_the_runs_accuracies_and_export_runs_in_torch_export(okd_ray, tmp_path):
    """The issue's end to end: okd-ray train method.name=ffl epochs=2 --run-dir R; okd-ray eval R; okd-ray export R
    --part fused --format pt2 --out E."""
    run, out = tmp_path / "R", tmp_path / "E"
    trained = okd_ray.run("train", "method.name=ffl", *TINY, "--run-dir", run, "--quiet")
    assert trained.returncode == 0, trained.stderr
    evaluated = okd_ray.run("eval", run)
    assert evaluated.returncode == 0 and not evaluated.stderr, evaluated.stderr
    held = [r["test_top1"] for r in pq.read_table(run / "metrics.parquet").to_pylist() if r["epoch"] == 2]
    held = [value for value in held if value is not None]  # every part but the trunk's
    printed = next(line for line in evaluated.stdout.splitlines() if "test@1" in line)
    assert re.findall(r"\d+\.\d\d", printed) == [f"{value:.2f}" for value in held]
    assert [r["test_top1"] for r in pq.read_table(run / "eval.parquet").to_pylist()] == held
    exported = okd_ray.run("export", run, "--part", "fused", "--format", "pt2", "--out", out)
    assert exported.returncode == 0, exported.stderr
    x = torch.randn(9, 1, 8, 8)
    with torch.no_grad():
        want = load_model(str(run), "fused")(x)
        got = torch.export.load(out / "model.pt2").module()(x)
    assert (got - want).abs().max() <= 1e-6 * want.abs().max()  # the README's tolerance for pt2
    missing = okd_ray.run("export", run, "--part", "teacher", "--format", "pt2", "--out", out)
    okd_ray.assert_error(
        missing,
        2,
        "part 'teacher': a run of 2 members, method ffl, has no such part; its parts: m0, m1, fused, ensemble",
    )


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    return code, " ".join(capsys.readouterr().err.split())


def test_bad_input_is_one_message_with_exit_code_2(ffl_run, afd_tv_replicas_bf16_run, tmp_path, capsys, monkeypatch):
    for args, message in [
        (["eval", tmp_path], f"{tmp_path}: no config.yaml there; give the folder of an okd-ray run"),
        (["eval", ffl_run, "--checkpoint", "5"], "checkpoint 5: "),
        (["eval", ffl_run, "seed=3"], "override 'seed=3': okd-ray eval changes only"),
        (
            ["export", afd_tv_replicas_bf16_run, "--part", "fused", "--out", tmp_path / "x"],
            "part 'fused': a run of 2 members, method afd, has no such part; its parts: m0, m1, ensemble",
        ),
        (["export", ffl_run, "--format", "tflite", "--out", tmp_path / "x"], "--format tflite: choose one of"),
    ]:
        code, err = run_cli(capsys, *args)
        assert code == 2 and err.startswith("error: ") and message in err, (args, code, err)
    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code, err = run_cli(capsys, "export", ffl_run, "--format", "onnx", "--out", tmp_path / "x")
    assert code == 2 and "--format onnx needs onnxruntime, which is not installed: pip install 'okd-ray[onnx]'" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_folder_without_a_checkpoint(ffl_run, tmp_path, capsys, command):
    shutil.copy(f"{ffl_run}/config.yaml", tmp_path)
    code, err = run_cli(capsys, command, tmp_path, *(["--out", tmp_path / "x"] if command == "export" else []))
    assert code == 2 and f"{tmp_path} holds no checkpoint (checkpoints/manifest.json is missing)" in err

"""okd-ray eval: every part of a checkpoint through the run's own evaluation. On the run's own data it gives the
run's own numbers exactly, for checkpoints of either engine; on other data, the same parts."""

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from okd_ray.config import load_config
from okd_ray.errors import ConfigError
from okd_ray.run import train
from okd_ray.trained.evaluate import evaluate_run

SPLITS = ["val_top1", "val_top5", "test_top1", "test_top5"]


def assert_as_the_run(run_dir, rows, epoch):
    """Every part with accuracies, each of them equal (==) to the run's row of ``epoch``."""
    held = [r for r in pq.read_table(f"{run_dir}/metrics.parquet").to_pylist() if r["epoch"] == epoch]
    assert [r["part"] for r in rows] == [r["part"] for r in held if r["test_top1"] is not None]
    for row, run in zip(rows, (r for r in held if r["test_top1"] is not None)):
        assert row["epoch"] == epoch
        assert {c: row.get(c) for c in SPLITS} == {c: run.get(c) for c in SPLITS}, row["part"]


@pytest.mark.parametrize("run", ["ffl_run", "pcl_run", "one_run", "afd_tv_replicas_bf16_run"])
def test_the_runs_own_last_epoch_exactly(request, run, capsys):
    """Members, ensemble, fused classifier (FFL's; PCL's peer ensemble), ONE's teacher; bf16 autocast, replicas."""
    run_dir = request.getfixturevalue(run)
    rows = evaluate_run(run_dir, quiet=True)
    assert_as_the_run(run_dir, rows, 1 if run != "ffl_run" else 2)
    assert pq.read_table(f"{run_dir}/eval.parquet").to_pylist() == rows
    assert not capsys.readouterr().err  # no warning: it agrees with metrics.parquet


def test_an_earlier_checkpoint_and_a_validation_split(ffl_run):
    rows = evaluate_run(ffl_run, checkpoint=1, quiet=True)
    assert_as_the_run(ffl_run, rows, 1)
    assert all(r["val_top1"] is not None for r in rows)


def test_a_difference_from_the_run_is_told(ffl_run, tmp_path, capsys):
    copy = shutil.copytree(ffl_run, tmp_path / "run")
    table = pq.read_table(copy / "metrics.parquet")
    changed = [v + 1 if p == "fused" else v for p, v in zip(table["part"].to_pylist(), table["test_top1"].to_pylist())]
    pq.write_table(
        table.set_column(table.schema.get_field_index("test_top1"), "test_top1", pa.array(changed)),
        copy / "metrics.parquet",
    )
    evaluate_run(str(copy), quiet=True)
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: fused test_top1" in err and "differ from" in err and "epoch 2" in err


def test_other_data(ffl_run, tmp_path, capsys):
    rows = evaluate_run(ffl_run, ["data.test_limit=40", "data.validation=0"], out=str(tmp_path / "e.parquet"))
    assert [r["part"] for r in rows] == ["m0:cnn16", "m1:resnet8", "fused", "ensemble"]
    assert all(r["data"] == "digits" and "val_top1" not in r for r in rows)
    assert pq.read_table(tmp_path / "e.parquet").to_pylist() == rows
    out = capsys.readouterr()
    assert "checkpoint of epoch 2 on digits" in " ".join(out.out.split()) and "test@1" in out.out and not out.err


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["epochs=3"],
            "override 'epochs=3': okd-ray eval changes only what it evaluates on and how (data.*, threads, "
            "device), never the trained population",
        ),
        (
            ["data.name=synthetic-cifar100", "data.validation=0"],
            "data.name=synthetic-cifar100: the run's networks take 1×8×8 images of 10 classes, that data set has "
            "3×32×32 images of 100 classes",
        ),
    ],
)
def test_overrides_that_cannot_be(ffl_run, overrides, message):
    with pytest.raises(ConfigError) as error:
        evaluate_run(ffl_run, overrides, quiet=True)
    assert message in str(error.value)


def test_a_ray_runs_checkpoint(on_ray, tmp_path):
    """The parts wrote their shards in their actors (one torch thread each, as threads=1 makes the eval)."""
    config = load_config(
        None,
        [
            "method.name=ffl",
            "members=[cnn16, resnet8]",
            "epochs=1",
            "data.train_limit=64",
            "data.test_limit=64",
            "data.batch_size=32",
            "threads=1",
            *on_ray,
        ],
    )
    run_dir = train(config, run_dir=str(tmp_path / "ray"), quiet=True).run_dir
    assert_as_the_run(run_dir, evaluate_run(run_dir, quiet=True), 1)

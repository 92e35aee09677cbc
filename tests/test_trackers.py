"""logging: [tensorboard, mlflow]: every epoch's row and every N-th step's loss terms as TensorBoard events and
MLflow metrics, read back with each library's own reader and compared with metrics.parquet."""

import signal

import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_runs(folder):
    """The MLflow runs in ``folder``'s own database, each with its status, params and metric histories."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("okd-ray").experiment_id])
    return [
        (
            run.info.status,
            run.data.params,
            {
                key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                for key in run.data.metrics
            },
        )
        for run in runs
    ]


def test_tensorboard_and_mlflow_get_every_epoch_row_and_every_nth_step(tmp_path, okd_ray):
    folder = tmp_path / "run"
    # 256 samples in batches of 32: 8 steps an epoch, 16 in all; every 4th is logged
    result = okd_ray.run(
        "train",
        "method.name=ffl",
        "epochs=2",
        "data.train_limit=256",
        "data.test_limit=128",
        "data.batch_size=32",
        "logging=[tensorboard, mlflow]",
        "log_every_steps=4",
        "--run-dir",
        folder,
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), result.stderr  # quiet: no MLflow set-up lines either
    epochs = scalars(folder / "tensorboard" / "epochs")
    rows = pq.read_table(folder / "metrics.parquet").to_pylist()
    expected = epoch_values(rows, {"m0:cnn16": "m0", "m1:cnn32": "m1", "fused": "fused", "ensemble": "ensemble"})
    assert epochs == {
        tag: [(e, float(np.float32(v))) for e, v in values]  # TensorBoard keeps float32
        for tag, values in expected.items()
    }
    assert {"m0/fused_kl", "m1/lr_logit", "fused/ensemble_kl", "ensemble/test_top1", "m0/test_top5"} <= set(epochs)

    steps = scalars(folder / "tensorboard" / "steps")
    assert {"m0/ce", "m1/fused_kl", "fused/ensemble_kl", "m0/train_top1"} <= set(steps)
    assert all([s for s, _ in values] == [4, 8, 12, 16] for values in steps.values()), steps
    assert all(np.isfinite(v) for values in steps.values() for _, v in values)

    ((status, params, histories),) = mlflow_runs(folder)
    assert status == "FINISHED" and params["method.name"] == "ffl" and params["members.1.arch"] == "cnn32"
    assert {k: v for k, v in histories.items() if not k.startswith("steps/")} == expected  # MLflow keeps float64
    assert {k.removeprefix("steps/"): [s for s, _ in v] for k, v in histories.items() if k.startswith("steps/")} == {
        tag: [s for s, _ in values] for tag, values in steps.items()
    }


def epoch_values(rows, keys):
    """{tag: [(epoch, value)]} of every float column of metrics.parquet's rows."""
    out = {}
    for row in rows:
        for name, value in row.items():
            if isinstance(value, float):
                out.setdefault(f"{keys[row['part']]}/{name}", []).append((row["epoch"], value))
    return out


def test_a_resume_writes_on_from_its_checkpoint_and_hides_what_the_lost_attempt_wrote(tmp_path, okd_ray):
    folder = tmp_path / "run"
    args = [
        "epochs=2",
        "data.train_limit=256",
        "data.test_limit=128",
        "data.batch_size=32",
        "logging=[tensorboard, mlflow]",
        "log_every_steps=4",
    ]
    assert okd_ray.run("train", *args, "--run-dir", folder, "--quiet").returncode == 0
    shard = folder / "checkpoints" / "epoch-0002" / "m0.pt"
    shard.write_bytes(shard.read_bytes()[:100])  # epoch 2 is lost: the run falls back to epoch 1
    result = okd_ray.run("train", "--resume", folder, "epochs=3", "--quiet")
    assert result.returncode == 0 and "resuming from the one of epoch 1" in " ".join(result.stderr.split())
    rows = pq.read_table(folder / "metrics.parquet").to_pylist()
    epochs = scalars(folder / "tensorboard" / "epochs")
    assert epochs["m0/test_top1"] == [
        (r["epoch"], float(np.float32(r["test_top1"]))) for r in rows if r["part"] == "m0:cnn16"
    ]  # epoch 2 once: the one trained again
    assert [s for s, _ in scalars(folder / "tensorboard" / "steps")["m0/ce"]] == [4, 8, 12, 16, 20, 24]
    ((status, _, histories),) = mlflow_runs(folder)  # the same MLflow run, logged on into
    assert status == "FINISHED" and [s for s, _ in histories["m0/test_top1"]] == [1, 2, 2, 3]  # MLflow keeps all


def test_a_run_interrupted_in_its_first_epoch_leaves_no_events_behind(tmp_path, okd_ray):
    folder = tmp_path / "run"
    process = okd_ray.start_until(
        folder / "tensorboard" / "steps",
        "train",
        "epochs=1",
        "data.batch_size=4",
        "logging=[tensorboard, mlflow]",
        "log_every_steps=1",
        "--run-dir",
        folder,
    )
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted before the first epoch ended" in err, err[-2000:]
    assert not folder.exists() or not list(folder.iterdir()), list(folder.iterdir())


def test_a_signal_while_a_writer_is_made_takes_effect_once_the_writer_is_kept():
    """The writer's event thread starts inside its constructor: interrupted there, it outlived ``discard`` and
    wrote into the folder being deleted (CI: 'Directory not empty', exit 1 instead of 130)."""
    from okd_ray.trackers.tensorboard import signals_deferred

    outside = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own (an in-process sweep sets Tune's)
    try:
        kept = []
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                signal.raise_signal(signal.SIGINT)
                kept.append("writer")
        assert kept == ["writer"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outside)


def test_mlflow_needs_a_tracking_uri_for_a_run_folder_given_as_a_uri(tmp_path, monkeypatch):
    from okd_ray.errors import ConfigError
    from okd_ray.storage import RunStore
    from okd_ray.trackers.mlflow import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(RunStore(str(tmp_path / "run"))) == f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    with pytest.raises(ConfigError, match="set MLFLOW_TRACKING_URI to your tracking server"):
        tracking_uri(RunStore("mock:///bucket/run"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking_uri(RunStore("mock:///bucket/run")) == "http://tracking:5000"

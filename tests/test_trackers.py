"""logging: [tensorboard]: every epoch's row and every N-th step's loss terms as TensorBoard events, read back
with TensorBoard's own EventAccumulator and compared with metrics.parquet."""

import numpy as np
import pyarrow.parquet as pq
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_every_epoch_row_and_every_nth_step(tmp_path, okd_ray):
    folder = tmp_path / "run"
    # 256 samples in batches of 32: 8 steps an epoch, 16 in all; every 4th is logged
    result = okd_ray.run("train", "method.name=ffl", "epochs=2", "data.train_limit=256", "data.test_limit=128",
                         "data.batch_size=32", "logging=[tensorboard]", "log_every_steps=4", "--run-dir", folder,
                         "--quiet")
    assert result.returncode == 0, result.stderr
    epochs = scalars(folder / "tensorboard" / "epochs")
    rows = pq.read_table(folder / "metrics.parquet").to_pylist()
    keys = {"m0:cnn16": "m0", "m1:cnn32": "m1", "fused": "fused", "ensemble": "ensemble"}
    expected = {}
    for row in rows:
        for name, value in row.items():
            if isinstance(value, float):
                tag = f"{keys[row['part']]}/{name}"
                expected.setdefault(tag, []).append((row["epoch"], float(np.float32(value))))
    assert epochs == expected  # TensorBoard keeps float32
    assert {"m0/fused_kl", "m1/lr_logit", "fused/ensemble_kl", "ensemble/test_top1", "m0/test_top5"} <= set(epochs)

    steps = scalars(folder / "tensorboard" / "steps")
    assert {"m0/ce", "m1/fused_kl", "fused/ensemble_kl", "m0/train_top1"} <= set(steps)
    assert all([s for s, _ in values] == [4, 8, 12, 16] for values in steps.values()), steps
    assert all(np.isfinite(v) for values in steps.values() for _, v in values)


def test_a_resume_writes_on_from_its_checkpoint_and_hides_what_the_lost_attempt_wrote(tmp_path, okd_ray):
    folder = tmp_path / "run"
    args = ["epochs=2", "data.train_limit=256", "data.test_limit=128", "data.batch_size=32", "logging=[tensorboard]",
            "log_every_steps=4"]
    assert okd_ray.run("train", *args, "--run-dir", folder, "--quiet").returncode == 0
    shard = folder / "checkpoints" / "epoch-0002" / "m0.pt"
    shard.write_bytes(shard.read_bytes()[:100])  # epoch 2 is lost: the run falls back to epoch 1
    result = okd_ray.run("train", "--resume", folder, "epochs=3", "--quiet")
    assert result.returncode == 0 and "resuming from the one of epoch 1" in " ".join(result.stderr.split())
    rows = pq.read_table(folder / "metrics.parquet").to_pylist()
    epochs = scalars(folder / "tensorboard" / "epochs")
    assert epochs["m0/test_top1"] == [(r["epoch"], float(np.float32(r["test_top1"]))) for r in rows
                                      if r["part"] == "m0:cnn16"]  # epoch 2 once: the one trained again
    assert [s for s, _ in scalars(folder / "tensorboard" / "steps")["m0/ce"]] == [4, 8, 12, 16, 20, 24]

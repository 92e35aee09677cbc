"""Checkpoints you can trust: every shard's size and sha256 in the manifest, checked on resume; a damaged newest
checkpoint falls back to the one before it, and finished epochs are never silently overwritten. Through the
real okd-ray command."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from okd_ray.checkpoint import read_manifest
from okd_ray.run import train
from okd_ray.storage import RunStore

TINY = ["data.train_limit=128", "data.test_limit=64", "data.batch_size=32"]


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_manifest_records_what_each_part_wrote_and_keeps_the_checkpoint_before(tiny_config, tmp_path):
    import hashlib

    train(tiny_config("method.name=ffl", "epochs=3", *TINY), run_dir=str(tmp_path / "run"), quiet=True)
    manifest = read_manifest(RunStore(str(tmp_path / "run")))
    assert [c.epoch for c in manifest.checkpoints] == [3, 2]
    for checkpoint in manifest.checkpoints:
        assert sorted(checkpoint.shards) == ["fused", "m0", "m1"]
        for key, shard in checkpoint.shards.items():
            data = (tmp_path / "run" / checkpoint.folder / f"{key}.pt").read_bytes()
            assert (shard.size, shard.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "epoch-0002",
        "epoch-0003",
        "manifest.json",
    ]


@pytest.mark.parametrize("engine", ["local", "ray"])  # with ray, each actor checks its own shard
def test_a_flipped_byte_in_the_newest_checkpoint_falls_back_to_the_one_before(
    request, tiny_config, tmp_path, okd_ray, engine
):
    # with ray, the session's cluster runs (as one ray start left on this machine): okd-ray without --address starts
    # a Ray of its own, never joins that one
    session = {n["NodeID"] for n in request.getfixturevalue("ray_cluster").nodes()} if engine == "ray" else set()
    folder = tmp_path / "run"
    train(tiny_config("epochs=2", *TINY), run_dir=str(folder), quiet=True)
    flip_middle_byte(folder / "checkpoints" / "epoch-0002" / "m0.pt")
    result = okd_ray.run("train", "--resume", folder, "epochs=3", f"engine={engine}")
    assert result.returncode == 0, result.stderr
    if engine == "ray":
        placement = json.loads((folder / "placement.json").read_text())
        assert not {part["node"] for part in placement["parts"]} & session
    err = " ".join(result.stderr.split())
    assert (
        f"warning: checkpoint file {folder}/checkpoints/epoch-0002/m0.pt does not match the sha256 in the "
        "manifest, so the checkpoint of epoch 2 is unusable; resuming from the one of epoch 1: epochs 2 to 2 "
        "are trained again"
    ) in err, err
    assert f"resuming {folder} after epoch 1 (epochs 2 to 2 in metrics.parquet are trained again)" in result.stdout
    assert [c.epoch for c in read_manifest(RunStore(str(folder))).checkpoints] == [3, 2]
    epochs = [r["epoch"] for r in pq.read_table(folder / "metrics.parquet").to_pylist() if r["part"] == "ensemble"]
    assert epochs == [1, 2, 3]


@pytest.mark.parametrize("damage_before", [False, True], ids=["only-checkpoint", "both-checkpoints"])
def test_a_truncated_shard_with_no_intact_checkpoint_left_is_one_error_naming_it(
    tiny_config, tmp_path, okd_ray, damage_before
):
    folder = tmp_path / "run"
    train(tiny_config(f"epochs={1 + damage_before}", *TINY), run_dir=str(folder), quiet=True)
    newest = folder / "checkpoints" / f"epoch-{1 + damage_before:04d}" / "m1.pt"
    size = newest.stat().st_size
    newest.write_bytes(newest.read_bytes()[: size // 2])
    if damage_before:
        (folder / "checkpoints" / "epoch-0001" / "m0.pt").unlink()
    before = snapshot(folder)
    result = okd_ray.run("train", "--resume", folder, "epochs=3", "--quiet")
    err = okd_ray.assert_error(
        result,
        2,
        f"error: checkpoint file {newest} has {size // 2} bytes where the manifest says {size}",
        f"no intact checkpoint is left to resume from: start the run over with okd-ray train {folder}/config.yaml",
    )
    too = (
        f"the checkpoint of epoch 1 is unusable too (checkpoint file {folder}/checkpoints/epoch-0001/m0.pt is missing)"
    )
    assert (too in err) == damage_before, err
    assert snapshot(folder) == before


@pytest.mark.parametrize("how", ["resume", "run-dir"])
def test_finished_epochs_without_a_manifest_are_refused_not_overwritten(tiny_config, tmp_path, okd_ray, how):
    folder = tmp_path / "run"
    train(tiny_config("epochs=1", *TINY), run_dir=str(folder), quiet=True)
    (folder / "checkpoints" / "manifest.json").unlink()
    before = snapshot(folder)
    args = ["--resume", folder] if how == "resume" else [*TINY, "--run-dir", folder]
    okd_ray.assert_error(
        okd_ray.run("train", *args, "epochs=2", "--quiet"),
        2,
        f"error: {folder} holds metrics.parquet with 1 finished epochs but no checkpoint "
        "(checkpoints/manifest.json is missing), so the run cannot be continued and its epochs are not "
        f"overwritten. Start it over in a new folder: okd-ray train {folder}/config.yaml (or delete {folder} first)",
    )
    assert snapshot(folder) == before


def test_an_unreadable_manifest_is_one_error_naming_it(tiny_config, tmp_path, okd_ray):
    folder = tmp_path / "run"
    train(tiny_config("epochs=1", *TINY), run_dir=str(folder), quiet=True)
    (folder / "checkpoints" / "manifest.json").write_text('{"checkpoints": [{"epoch": 1')
    okd_ray.assert_error(
        okd_ray.run("train", "--resume", folder, "epochs=2", "--quiet"),
        2,
        f"error: checkpoint file {folder}/checkpoints/manifest.json cannot be read",
        f"start the run over with okd-ray train {folder}/config.yaml",
    )


def test_a_run_of_an_older_okd_ray_resumes_from_its_manifest_without_digests(tiny_config, tmp_path, okd_ray):
    import json

    folder = tmp_path / "run"
    train(tiny_config("epochs=1", *TINY), run_dir=str(folder), quiet=True)
    manifest = folder / "checkpoints" / "manifest.json"
    (latest,) = json.loads(manifest.read_text())["checkpoints"]
    manifest.write_text(
        json.dumps(
            {
                "epoch": latest["epoch"],
                "elapsed": latest["elapsed"],
                "folder": latest["folder"],
                "parts": list(latest["shards"]),
            }
        )
    )
    result = okd_ray.run("train", "--resume", folder, "epochs=2")
    assert result.returncode == 0, result.stderr
    assert f"resuming {folder} after epoch 1" in result.stdout
    assert [c.epoch for c in read_manifest(RunStore(str(folder))).checkpoints] == [2, 1]


@pytest.mark.parametrize("damage", ["deleted", "truncated", "changed"])
def test_metrics_lost_or_damaged_are_refused_naming_the_file(tiny_config, tmp_path, okd_ray, damage):
    """The manifest records each checkpoint's metrics rows (their sha256): a resume never drops or rewrites the
    history it continues, and never shows a pyarrow traceback."""
    folder = tmp_path / "run"
    train(tiny_config("epochs=2", *TINY), run_dir=str(folder), quiet=True)
    metrics = folder / "metrics.parquet"
    if damage == "deleted":
        metrics.unlink()
    elif damage == "truncated":
        metrics.write_bytes(metrics.read_bytes()[:100])
    else:
        table = pq.read_table(metrics)
        pq.write_table(
            table.set_column(table.schema.get_field_index("test_top1"), "test_top1", pa.array([99.0] * len(table))),
            metrics,
        )
    problem = {
        "deleted": "is missing: the checkpoint of epoch 2 continues the history of epochs 1 to 2 it held",
        "truncated": "cannot be read (Could not open Parquet input source",
        "changed": "was changed: its rows of epochs 1 to 2 are not those checkpoints/manifest.json records",
    }
    before = snapshot(folder)
    okd_ray.assert_error(
        okd_ray.run("train", "--resume", folder, "epochs=3", "--quiet"),
        2,
        f"error: file {metrics} {problem[damage]}",
        f"put it back as it was, or start the run over with okd-ray train {folder}/config.yaml",
    )
    assert snapshot(folder) == before
    if damage == "truncated":  # the report too names the file
        okd_ray.assert_error(okd_ray.run("report", folder), 2, f"error: file {metrics} cannot be read")

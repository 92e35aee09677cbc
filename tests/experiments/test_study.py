"""The Fashion-MNIST study script: resumable runs side by side, and the paired intervals of its report."""

import importlib.util
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).parents[2]
spec = importlib.util.spec_from_file_location("study", ROOT / "experiments" / "study_fashion_mnist.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)

DIGITS = ["data.name=digits", "epochs=2", "data.train_limit=256", "data.test_limit=128", "data.batch_size=32"]


def test_runs_are_resumable_the_report_pairs_seeds_and_the_tuned_study_sets_them_beside(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "results" / "study"
    study.run_study(["vanilla", "ffl"], [0, 1], runs, DIGITS, jobs=2)
    assert capsys.readouterr().out.count("trained") == 4
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("manifest.json")}
    study.run_study(["vanilla", "ffl"], [0, 1, 2], runs, DIGITS, jobs=2)  # one more seed: only it trains
    out_text = capsys.readouterr().out
    assert out_text.count("finished, skipped") == 4 and out_text.count("trained") == 2
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    text = study.report(["vanilla", "ffl"], [0, 1, 2], runs, out, DIGITS)
    diffs = pq.read_table(out.parent / "study_intervals.parquet").to_pylist()
    table = pq.read_table(out.with_suffix(".parquet")).to_pylist()
    final = study.final_top1(table)
    # every method's loss columns, though vanilla's rows (first) have none of FFL's
    assert all(r["fused_kl"] is not None for r in table if r["method"] == "ffl" and r["kind"] == "member")
    m0 = next(d for d in diffs if d["comparison"] == "vs vanilla" and d["part"] == "m0")
    assert m0["seeds"] == 3
    assert m0["mean_diff"] == pytest.approx(
        sum(final["ffl", "m0", s] - final["vanilla", "m0", s] for s in range(3)) / 3
    )
    assert any(d["comparison"] == "fused vs own parts" for d in diffs) and "| ffl |" in text
    for name in ("study_curves.png", "study_differences.png"):
        assert (out.parent / name).stat().st_size > 1000

    (study.run_dir(runs, "ffl", 2) / "checkpoints" / "manifest.json").unlink()  # as if still training
    study.report(["vanilla", "ffl"], [0, 1, 2], runs, out, DIGITS)
    diffs = pq.read_table(out.parent / "study_intervals.parquet").to_pylist()
    assert {d["seeds"] for d in diffs if d["comparison"] == "vs vanilla"} == {2}

    with pytest.raises(SystemExit, match="another config"):  # a changed budget never mixes with old runs
        study.run_study(["vanilla"], [0], runs, [*DIGITS, "data.train_limit=300"])

    # The tuned study, with the runs above (seeds 0 and 1) as its untuned side: it sweeps on validation,
    # retrains what it selected on the study's seeds and sets the untuned runs beside.
    methods, seeds, tuned, kept = ["vanilla", "ffl"], [0, 1], tmp_path / "tuned", tmp_path / "tuned" / "study_sweeps"
    study.tune(methods, tuned / "sweeps", kept, [*DIGITS, "epochs=1"], trials=2, jobs=2)
    best = (kept / "ffl" / "best_config.yaml").read_text()
    assert "best by mean_val_top1 (max) on the validation set" in best and not (kept / "vanilla").exists()
    assert f"seed: {study.TUNE_SEED}" in best and "validation: 0.1" in best
    study.run_study(methods, seeds, tuned, DIGITS, jobs=2, kept=kept)
    text = study.report(methods, seeds, tuned, tuned / "study", DIGITS, kept, out.with_suffix(".parquet"))
    config = (study.run_dir(tuned, "ffl", 1) / "config.yaml").read_text()  # every training image, seed 1
    assert "seed: 1" in config and "validation: 0\n" in config
    assert "| m0:fmnet-s untuned | m0:fmnet-s tuned |" in text
    diffs = pq.read_table(tuned / "study_intervals.parquet").to_pylist()
    # vanilla is the same config on the same seeds in both studies: tuning can change nothing there
    vanilla = [d for d in diffs if d["comparison"] == "tuned vs untuned" and d["method"] == "vanilla"]
    assert vanilla and all(d["mean_diff"] == 0 and d["sd_diff"] == 0 for d in vanilla)
    assert any(d["comparison"] == "tuned vs untuned" and d["method"] == "ffl" for d in diffs)
    sweep = pq.read_table(tuned / "study_sweeps.parquet").to_pylist()
    assert [s["method"] for s in sweep] == ["ffl"] and sweep[0]["trials"] == 2


def test_paired_interval_by_hand():
    d = study.paired([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])  # differences 1, 2, 3: mean 2, sd 1
    half = 4.302652729911275 / 3**0.5  # t(0.975, 2 degrees of freedom) · sd / √n
    assert d["mean_diff"] == 2.0 and d["sd_diff"] == 1.0
    assert d["ci_low"] == pytest.approx(2 - half) and d["ci_high"] == pytest.approx(2 + half)
    assert d["p"] == pytest.approx(0.07417990022744847)  # t = 2 / (1/√3) = 3.464 on 2 degrees of freedom
    assert study.established(d) == "no"  # [-0.48, 4.48] holds zero
    assert study.established(study.paired([2.0, 3.0, 4.0], [0.0, 0.0, 0.0])) == "yes"  # [0.52, 5.48]


def test_benjamini_hochberg_over_the_reports_comparisons():
    """q = min over j >= rank of p_(j)·m/j, worked out here from the report's own p values."""
    seeds, final = [0, 1, 2, 3], {}
    for s, diffs in zip(seeds, [(1.0, 0.2, 3.0), (1.2, -0.4, 2.5), (0.9, 0.5, 2.8), (1.1, 0.1, 3.1)]):
        for part, d in zip(("m0", "m1", "ensemble"), diffs):
            final["vanilla", part, s], final["dml", part, s] = 0.0, d
    rows = study.differences(final, ["vanilla", "dml"], seeds)
    ps, m = [r["p"] for r in rows], len(rows)
    expected, running = [0.0] * m, 1.0
    for rank, i in reversed(list(enumerate(sorted(range(m), key=ps.__getitem__), start=1))):
        running = min(running, ps[i] * m / rank)
        expected[i] = running
    assert m == 3 and [r["q_bh"] for r in rows] == pytest.approx(expected)  # DML against vanilla, not twice
    assert [study.survives(r) for r in rows] == ["yes", "no", "yes"]  # m1's differences straddle zero


def test_the_committed_retrains_are_the_runs_the_study_would_make():
    """The tuned study's kept retrains count as finished (the README's way to go on from them): a key the config
    gained since they ran takes its default, which leaves a run as it was, so it is not another config."""
    results = ROOT / "experiments" / "results"
    rows = study.collect(
        study.METHODS,
        list(range(5)),
        results / "study_fashion_mnist_tuned_runs",
        [],
        results / "study_fashion_mnist_tuned_sweeps",
    )
    assert len({(r["method"], r["seed"]) for r in rows}) == len(study.METHODS) * 5

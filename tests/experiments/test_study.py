"""The Fashion-MNIST study script: finished runs are skipped, so it can be rerun and extended."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
spec = importlib.util.spec_from_file_location("study", ROOT / "experiments" / "study_fashion_mnist.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)

DIGITS = ["data.name=digits", "epochs=1", "data.train_limit=256", "data.test_limit=128", "data.batch_size=32"]


def test_finished_runs_are_skipped(tmp_path, capsys):
    runs = tmp_path / "runs"
    first = study.run_study(["vanilla", "afd+ffl"], [0, 1], runs, DIGITS)
    assert "training" in capsys.readouterr().out
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("manifest.json")}
    assert len(stamps) == 4

    again = study.run_study(["vanilla", "afd+ffl"], [0, 1], runs, DIGITS)
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 4 and "training" not in out
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("manifest.json")} == stamps
    assert again == first

    extended = study.run_study(["vanilla"], [0, 1, 2], runs, DIGITS)  # one more seed: only it trains
    assert capsys.readouterr().out.count("training") == 1 and len({r["seed"] for r in extended}) == 3

    with pytest.raises(SystemExit, match="another config"):  # a changed budget never mixes with old runs
        study.run_study(["vanilla"], [0], runs, [*DIGITS, "data.train_limit=300"])


def test_summary_is_mean_and_std_over_seeds(tmp_path):
    rows = [{"method": "afd", "part": "m0:cnn16", "test_top1": v} for v in (80.0, 82.0, 84.0)]
    (summary,) = study.summarize(rows)
    assert summary["mean_test_top1"] == 82.0 and summary["std_test_top1"] == 2.0 and summary["seeds"] == 3
    assert "82.00 ± 2.00" in study.markdown([summary])
    study.plot([summary], tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000

"""okd-ray report on the local engine's, the Ray engine's and Tune's folders."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from okd_ray.cli import main
from okd_ray.report import fmt

TINY = ["epochs=2", "data.train_limit=128", "data.test_limit=64", "data.batch_size=32", "--quiet"]


def table_cells(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def check_run_report(folder):
    assert main(["report", str(folder)]) == 0
    png = folder / "test_top1.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    rows = pq.read_table(folder / "metrics.parquet").to_pylist()
    final = {r["part"]: r for r in rows if r["epoch"] == max(x["epoch"] for x in rows)}
    cells = table_cells((folder / "report.md").read_text())
    assert {c[0] for c in cells} == set(final)
    for part, top1, top5, train_top1, ce in cells:
        assert (top1, top5, train_top1, ce) == tuple(fmt(final[part][k]) for k in ("test_top1", "test_top5", "train_top1", "ce"))


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_report_of_a_run(request, tmp_path, engine):
    if engine == "ray":
        request.getfixturevalue("ray_cluster")
    folder = tmp_path / "run"
    assert main(["train", "method.name=afd+ffl", f"engine={engine}", *TINY, "--run-dir", str(folder)]) == 0
    check_run_report(folder)


def test_report_of_a_sweep(ray_cluster, tmp_path):
    config = str(Path(__file__).parents[1] / "experiments" / "configs" / "tune-digits.yaml")
    assert main(["tune", config, *TINY, "epochs=1", "--num-samples", "2", "--scheduler", "none",
                 "--storage-path", str(tmp_path), "--name", "sweep"]) == 0
    folder = tmp_path / "sweep"
    assert main(["report", str(folder)]) == 0
    pngs = sorted(folder.glob("mean_test_top1_vs_*.png"))
    assert len(pngs) == 4 and all(p.stat().st_size > 1000 for p in pngs)
    trials = {t["trial_id"]: t for t in pq.read_table(folder / "trials.parquet").to_pylist()}
    cells = table_cells((folder / "report.md").read_text())
    assert {c[0] for c in cells} == set(trials)
    keys = sorted(k for k in next(iter(trials.values())) if k.startswith("config/"))
    column = 1 + keys.index("config/method.terms.adversarial.weight")
    for cell in cells:
        assert cell[-1] == fmt(trials[cell[0]]["mean_test_top1"])
        assert cell[column] == fmt(trials[cell[0]]["config/method.terms.adversarial.weight"])


def test_report_of_a_folder_without_results_names_the_fix(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "neither metrics.parquet" in capsys.readouterr().err

"""okd-ray report on the local engine's, the Ray engine's and Tune's folders: tables, titled plots, the right axes."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from okd_ray.cli import main
from okd_ray.report import fmt, make_report, rank_trials, run_report, sweep_report

TINY = ["epochs=2", "data.train_limit=128", "data.test_limit=64", "data.batch_size=32", "--quiet"]


def table_cells(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def titles(figure) -> list[str]:
    return [ax.get_title() for ax in figure.axes]


def check_run_report(folder):
    (folder / "report").mkdir()
    (folder / "report" / "stale.png").write_bytes(b"an earlier report's plot")
    assert main(["report", str(folder)]) == 0
    assert sorted(p.name for p in (folder / "report").iterdir()) == [
        "loss_terms.png",
        "report.md",
        "test_top1.png",
        "train_vs_test_top1.png",
    ], "a stale file outlived its report"
    for png in (folder / "report").glob("*.png"):
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    rows = pq.read_table(folder / "metrics.parquet").to_pylist()
    final = {r["part"]: r for r in rows if r["epoch"] == max(x["epoch"] for x in rows)}
    cells = table_cells((folder / "report" / "report.md").read_text())
    assert {c[0] for c in cells} == set(final)
    for part, top1, top5, train_top1 in cells:
        assert (top1, top5, train_top1) == tuple(fmt(final[part][k]) for k in ("test_top1", "test_top5", "train_top1"))


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_report_of_a_run(request, tmp_path, engine):
    where = request.getfixturevalue("on_ray") if engine == "ray" else ()
    folder = tmp_path / "run"
    assert main(["train", "method.name=afd+ffl", *where, *TINY, "--run-dir", str(folder)]) == 0
    check_run_report(folder)


def test_run_plots_have_titles_a_panel_per_loss_term_and_train_against_test(tmp_path):
    assert main(["train", "method.name=afd+ffl", *TINY, "--run-dir", str(tmp_path / "run")]) == 0
    rows = pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
    # a panel per loss term in the data: every float column but accuracies, learning rates and times
    terms = [
        k
        for k in dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, float))
        if "top" not in k and not k.startswith("lr_") and "seconds" not in k
    ]
    assert {"ce", "ring_kl", "adversarial", "discriminator", "fused_kl"} <= set(terms)
    images = run_report(rows).images
    assert titles(images["test_top1.png"]) == ["digits-afd+ffl: test top-1 per epoch"]
    (gap,) = images["train_vs_test_top1.png"].axes
    assert gap.get_title().startswith("digits-afd+ffl: train (solid) against test (dashed) top-1")
    assert {"m0:cnn16 train", "m0:cnn16 test", "fused train"} <= set(gap.get_legend_handles_labels()[1])
    losses = images["loss_terms.png"]
    assert losses._suptitle.get_text() == "digits-afd+ffl: loss terms per epoch (training means)"
    assert titles(losses) == terms
    for ax in losses.axes:  # every part that has the term, overlaid, one point per epoch
        parts = {r["part"] for r in rows if r.get(ax.get_title()) is not None}
        assert set(ax.get_legend_handles_labels()[1]) == parts
        assert all(len(line.get_xdata()) == 2 for line in ax.get_lines())


def test_sweep_plots_put_each_key_on_its_own_kind_of_axis_and_mark_stopped_and_best():
    weight, temperature, rampup = (
        f"method.terms.{k}" for k in ("ring_kl.weight", "ring_kl.temperature", "fused_kl.rampup_epochs")
    )
    search = {
        "metric": ["fused_test_top1"],
        "mode": ["max"],
        "search": {
            weight: {"loguniform": [0.1, 10.0]},
            temperature: {"choice": [1.0, 3.0, 4.0]},
            rampup: {"int": [0, 5]},
        },
    }
    trials = [
        {
            "trial_id": trial,
            "status": status,
            "epochs": epochs,
            "best": trial == "a",
            "fused_test_top1": top1,
            f"config/{weight}": w,
            f"config/{temperature}": t,
            f"config/{rampup}": r,
        }
        for trial, status, epochs, top1, w, t, r in [
            ("a", "done", 3, 90.0, 5.0, 3.0, 2),
            ("b", "stopped", 1, 40.0, 0.2, 1.0, 4),
            ("c", "done", 3, 80.0, 1.0, 4.0, 0),
            ("d", "diverged", 0, float("nan"), 9.0, 4.0, 1),
        ]
    ]
    report = sweep_report(trials, search)
    assert [row[0] for row in report.rows] == ["a *", "c", "b", "d"], "best first, the diverged trial last"
    figures = {
        name.removeprefix("fused_test_top1_vs_method_terms_").removesuffix(".png"): f
        for name, f in report.images.items()
    }
    assert set(figures) == {"ring_kl_weight", "ring_kl_temperature", "fused_kl_rampup_epochs"}
    for figure in figures.values():
        (ax,) = figure.axes
        assert ax.get_title().startswith("fused_test_top1 against method.")
        assert set(ax.get_legend_handles_labels()[1]) == {"finished", "stopped early", "best: a"}
        assert sum(len(c.get_offsets()) for c in ax.collections) == 4, "3 trials with a result, and the best again"
    assert figures["ring_kl_weight"].axes[0].get_xscale() == "log"
    assert [t.get_text() for t in figures["ring_kl_temperature"].axes[0].get_xticklabels()] == ["1.0", "3.0", "4.0"]
    assert figures["fused_kl_rampup_epochs"].axes[0].get_xscale() == "linear"
    stopped = next(c for c in figures["ring_kl_weight"].axes[0].collections if c.get_label() == "stopped early")
    assert stopped.get_facecolor().size == 0 or stopped.get_facecolor()[0][3] == 0, "stopped trials are hollow"


def test_report_of_a_sweep(ray_cluster, tmp_path):
    config = str(Path(__file__).parents[1] / "experiments" / "configs" / "tune-digits.yaml")
    assert (
        main(
            [
                "tune",
                config,
                *TINY,
                "epochs=1",
                "--num-samples",
                "2",
                "--scheduler",
                "none",
                "--storage-path",
                str(tmp_path),
                "--name",
                "sweep",
            ]
        )
        == 0
    )
    folder = tmp_path / "sweep"
    report = make_report(str(folder))
    pngs = sorted((folder / "report").glob("mean_val_top1_vs_*.png"))
    assert len(pngs) == 4 and all(p.stat().st_size > 1000 for p in pngs)
    assert report.images["mean_val_top1_vs_method_terms_ring_kl_weight.png"].axes[0].get_xscale() == "log"
    trials = {t["trial_id"]: t for t in pq.read_table(folder / "trials.parquet").to_pylist()}
    cells = table_cells((folder / "report" / "report.md").read_text())
    assert {c[0].removesuffix(" *") for c in cells} == set(trials)
    assert [c[0].endswith(" *") for c in cells] == [trials[c[0].removesuffix(" *")]["best"] for c in cells]
    keys = sorted(k for k in next(iter(trials.values())) if k.startswith("config/"))
    column = 1 + keys.index("config/method.feature_update.optimizer.lr")
    for cell in cells:
        trial = trials[cell[0].removesuffix(" *")]
        assert cell[-1] == fmt(trial["mean_val_top1"]) and cell[-2] == trial["status"] == "done"
        assert cell[column] == fmt(trial["config/method.feature_update.optimizer.lr"])
    best = next(t for t in trials.values() if t["best"])
    assert (
        f"Test result of the configuration chosen on validation (trial {best['trial_id']}, last epoch): "
        f"mean_test_top1 {fmt(best['mean_test_top1'])}."
    ) in (folder / "report" / "report.md").read_text()


def test_report_of_a_folder_without_results_names_the_fix(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "neither metrics.parquet" in capsys.readouterr().err


@pytest.mark.parametrize("mode, order", [("max", ["b", "a", "c", "d"]), ("min", ["a", "b", "c", "d"])])
def test_trials_rank_best_first_and_diverged_or_failed_last_in_either_mode(mode, order):
    trials = [{"id": "c", "m": float("nan")}, {"id": "a", "m": 0.2}, {"id": "d"}, {"id": "b", "m": 0.9}]
    assert [t["id"] for t in rank_trials(trials, "m", mode)] == order

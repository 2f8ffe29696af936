"""experiments/compare.py on real runs (custom CNN and two pretrained recipes on the shared photos)."""

import json
import os

import pandas as pd
import pytest
from PIL import Image

from petlab.calibration import fit_temperature, reliability_panel
from petlab.rundir import read_predictions
from tests.runs import script


@pytest.fixture(scope="module")
def report(real_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    root = real_runs["custom_cnn"].parents[1]
    proc = script("compare.py", "--runs", root, "--out", out, "--name", "cats", "--no-comet")
    return out / "cats", proc.stdout


@pytest.mark.slow
def test_leaderboard_matches_the_run_records_and_ranks_by_validation(real_runs, report):
    folder, stdout = report
    board = pd.read_csv(folder / "leaderboard.csv")
    assert len(board) == 3 and set(board["arch"]) == {"custom_cnn", "efficientnet_lite0", "mobilenet_v2"}
    assert list(board["best_val_accuracy"]) == sorted(board["best_val_accuracy"], reverse=True)
    for run_dir in real_runs.values():
        results = json.loads((run_dir / "results.json").read_text())
        row = board.set_index("run").loc[run_dir.name]
        assert row["best_val_accuracy"] == pytest.approx(results["val"]["accuracy"])
        assert row["test_accuracy"] == pytest.approx(results["test"]["accuracy"])
        assert row["test_top5_accuracy"] == pytest.approx(results["test"]["top5_accuracy"])
        assert row["test_balanced_accuracy"] == pytest.approx(results["test"]["balanced_accuracy"])
        assert row["params"] == results["params_total"] and row["epochs"] == results["epochs_completed"]
        assert row["wall_time_s"] == pytest.approx(results["wall_time_s"])
        assert row["pretrained"] == (row["arch"] != "custom_cnn")
        assert f"arch:{row['arch']}" in row["tags"]
        # calibration from the run's own predictions: ECE of test, raw and with T fitted on val
        predictions = read_predictions(run_dir)
        panel = reliability_panel(predictions["test"]["probs"], predictions["test"]["targets"],
                                  fit_temperature(predictions["val"]["probs"], predictions["val"]["targets"]))
        assert row["test_ece"] == pytest.approx(panel["ece_before"])
        assert row["test_ece_calibrated"] == pytest.approx(panel["ece_after"])
    markdown = (folder / "leaderboard.md").read_text()
    assert markdown in stdout and f"{board['best_val_accuracy'][0]:.2%}" in markdown


@pytest.mark.slow
def test_report_has_every_figure_and_one_page_showing_them(report):
    folder, _ = report
    figures = ["learning_curves_cats_vs_dogs.png", "confusion_matrices_cats_vs_dogs.png",
               "per_class_accuracy_cats_vs_dogs.png", "reliability_cats_vs_dogs.png"]
    page = (folder / "index.html").read_text()
    for name in figures:
        with Image.open(folder / name) as image:
            assert image.width >= 600 and image.height >= 250, name
        assert f'src="{name}"' in page
    assert page.count("<tr") == 4  # header + 3 runs
    # each run's highest-loss photos, overlaid with where its model looked for its answer
    losses = sorted(p.name for p in folder.glob("highest_loss_photos_*.png"))
    assert len(losses) == 3 and all(f'src="{name}"' in page for name in losses)


@pytest.mark.slow
def test_filters_by_arch_and_tag_and_refuses_an_empty_selection(real_runs, tmp_path):
    root = real_runs["custom_cnn"].parents[1]
    script("compare.py", "--runs", root, "--out", tmp_path, "--name", "lite", "--arch", "efficientnet_lite0")
    assert list(pd.read_csv(tmp_path / "lite" / "leaderboard.csv")["arch"]) == ["efficientnet_lite0"]
    script("compare.py", "--runs", root, "--out", tmp_path, "--name", "cnn", "--tag", "arch:custom_cnn")
    assert list(pd.read_csv(tmp_path / "cnn" / "leaderboard.csv")["arch"]) == ["custom_cnn"]
    proc = script("compare.py", "--runs", root, "--out", tmp_path, "--task", "breeds", check=False)
    assert proc.returncode == 2 and "no completed runs match" in proc.stderr
    proc = script("compare.py", "--runs", tmp_path / "nowhere", check=False)
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    proc = script("compare.py", "--runs", root, "--since", "yesterday", check=False)
    assert proc.returncode == 2 and "not a date" in proc.stderr


@pytest.mark.slow
def test_the_closing_summary_of_make_run_names_accuracies_archives_registry_and_next_steps(real_runs, report,
                                                                                          promoted_registry):
    folder, _ = report
    root = real_runs["custom_cnn"].parents[1]
    proc = script("summary.py", "--runs", root, "--report", folder,
                  env={**os.environ, "PETLAB_REGISTRY_DIR": str(promoted_registry)})
    out = proc.stdout
    for run_dir in real_runs.values():
        results = json.loads((run_dir / "results.json").read_text())
        assert f"val {results['val']['accuracy']:.2%}  test {results['test']['accuracy']:.2%}" in out
        assert run_dir.name in out
    assert "production model: petlab-cats-vs-dogs v1 (efficientnet_lite0" in out
    assert str(folder / "index.html") in out and "comet upload " in out and ".zip" in out
    assert "make demo" in out and "make dashboard" in out and "experiments/sweep.py" in out

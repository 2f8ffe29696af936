"""A comparison report of runs: leaderboard (markdown + CSV), figures, and one HTML page with them all."""

from __future__ import annotations

import html
import re
import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd

from petlab import rundir
from petlab.calibration import fit_temperature, reliability_panel
from petlab.fileio import write_csv
from petlab.reports.figures import plot_confusion_matrices, plot_learning_curves, plot_reliability, pyplot
from petlab.reports.runs import RunRecord, leaderboard


def run_labels(records: list[RunRecord]) -> dict[str, str]:
    """Short legend labels: the experiment name (or arch), numbered when several runs share it."""
    names = {r.run: r.config.get("name") if r.config.get("name") not in (None, "default") else r.arch
             for r in records}
    counts: dict[str, int] = {}
    labels = {}
    for r in sorted(records, key=lambda r: r.started or datetime.min):
        base = names[r.run]
        counts[base] = counts.get(base, 0) + 1
        labels[r.run] = base if list(names.values()).count(base) == 1 else f"{base} #{counts[base]}"
    return labels


def plot_per_class_accuracy(records: list[RunRecord], labels: dict[str, str], path: Path, split: str) -> None:
    """Heatmap of recall (the accuracy on each true class), runs by classes."""
    import seaborn as sns

    plt = pyplot()
    # a class with no images in the split has no accuracy: blank, not 0%
    table = pd.DataFrame({labels[r.run]: {c: v["recall"] if v["support"] else float("nan")
                                          for c, v in r.results[split]["per_class"].items()}
                          for r in records}).T
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * table.shape[1] + 3), max(2.5, 0.5 * table.shape[0] + 1.5)))
    sns.heatmap(table, annot=table.shape[1] <= 30, fmt=".0%", vmin=0, vmax=1, cmap="viridis", ax=ax,
                cbar_kws={"label": f"{split} accuracy on the class (recall)"})
    ax.set_xlabel("true class")
    ax.set_ylabel("")
    ax.set_title(f"per-class {split} accuracy")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(records: list[RunRecord], out_dir: Path, title: str) -> dict[str, Path]:
    """Everything goes in out_dir; returns the written files by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    board = leaderboard(records)
    labels = run_labels(records)
    board.insert(1, "label", board["run"].map(labels))
    calibration = calibration_by_run(records)
    for column, key in (("test_ece", "ece_before"), ("temperature_on_val", "temperature"),
                        ("test_ece_calibrated", "ece_after")):
        board[column] = [(calibration.get(run) or {}).get(key) for run in board["run"]]
    files = {"csv": out_dir / "leaderboard.csv", "markdown": out_dir / "leaderboard.md"}
    write_csv(files["csv"], board.to_dict("records"), list(board.columns))
    confused = most_confused_by_run(records, labels)
    files["markdown"].write_text(f"# {title}\n\nSorted by best validation accuracy (test is reported, never used to "
                                 f"rank).\n\n{_markdown(board)}\n" + "".join(
                                     f"\n## {label}: most confused on {split}\n\n"
                                     + "".join(f"- {p['true']} -> {p['predicted']}: {p['count']}\n" for p in pairs)
                                     for label, (split, pairs) in confused.items()))
    figures = {}
    for task in board["task"].unique():
        group = [r for r in records if r.task == task]
        curves = {labels[r.run]: r.history for r in group if r.history}
        if curves:
            figures[f"learning_curves_{task}"] = out_dir / f"learning_curves_{task}.png"
            plot_learning_curves(curves, figures[f"learning_curves_{task}"], f"{task}: learning curves")
        split = "test" if all("per_class" in r.metrics("test") for r in group) else "val"
        with_matrices = [r for r in group if "confusion_matrix" in r.metrics(split)]
        if with_matrices:
            classes = with_matrices[0].results["classes"]
            same = [r for r in with_matrices if r.results["classes"] == classes]
            figures[f"confusion_matrices_{task}"] = out_dir / f"confusion_matrices_{task}.png"
            plot_confusion_matrices({labels[r.run]: r.results[split] for r in same}, classes,
                                    figures[f"confusion_matrices_{task}"], f"{split} confusion matrices")
            figures[f"per_class_accuracy_{task}"] = out_dir / f"per_class_accuracy_{task}.png"
            plot_per_class_accuracy(same, labels, figures[f"per_class_accuracy_{task}"], split)
        calibrated = [r for r in group if r.run in calibration]
        if calibrated:
            figures[f"reliability_{task}"] = out_dir / f"reliability_{task}.png"
            plot_reliability({labels[r.run]: calibration[r.run] for r in calibrated}, figures[f"reliability_{task}"],
                             f"{task}: test reliability, before and after a temperature fitted on val")
    for r in records:  # each run's highest-loss photos, with where the model looked (engine/experiment.py)
        source = r.path / "top_losses.png" if r.path is not None else None
        if source is not None and source.is_file():
            name = f"highest_loss_photos_{re.sub(r'[^A-Za-z0-9._-]+', '_', labels[r.run])}"
            figures[name] = out_dir / f"{name}.png"
            shutil.copyfile(source, figures[name])
    files.update(figures)
    files["html"] = out_dir / "index.html"
    files["html"].write_text(_html(title, board, figures, confused))
    return files


def calibration_by_run(records: list[RunRecord]) -> dict[str, dict]:
    """run -> its test reliability panel (calibration.reliability_panel) with T fitted on its validation
    predictions, for the local runs that kept predictions.npz with both splits."""
    out = {}
    for r in records:
        found = rundir.read_predictions(r.path) if r.path is not None else None
        if found and "val" in found and "test" in found:
            temperature = fit_temperature(found["val"]["probs"], found["val"]["targets"])
            out[r.run] = reliability_panel(found["test"]["probs"], found["test"]["targets"], temperature)
    return out


def most_confused_by_run(records: list[RunRecord], labels: dict[str, str]) -> dict[str, tuple[str, list[dict]]]:
    """label -> (split, the run's most-confused pairs), from test when the run has it, else val."""
    out = {}
    for r in records:
        split = "test" if r.metrics("test").get("most_confused") is not None else "val"
        pairs = r.metrics(split).get("most_confused")
        if pairs:
            out[labels[r.run]] = (split, pairs)
    return out


def _markdown(board: pd.DataFrame) -> str:
    shown = board.drop(columns=["source"]).copy()
    for column in ("best_val_accuracy", "test_accuracy", "test_top5_accuracy", "test_balanced_accuracy"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.2%}")
    shown["wall_time_s"] = shown["wall_time_s"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
    shown["params"] = shown["params"].map(lambda v: "" if pd.isna(v) else f"{int(v):,}")
    shown["test_copies_in_train"] = shown["test_copies_in_train"].map(
        lambda v: "not checked" if pd.isna(v) else f"**{int(v)}**" if v else "0")
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _html(title: str, board: pd.DataFrame, figures: dict[str, Path],
          confused: dict[str, tuple[str, list[dict]]] | None = None) -> str:
    table = board.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="", border=0, classes="board")
    images = "\n".join(f'<h2>{html.escape(name.replace("_", " "))}</h2>\n<img src="{path.name}" alt="{name}">'
                       for name, path in figures.items())
    images += "".join(
        f"\n<h2>{html.escape(label)}: most confused on {split}</h2>\n<ul>"
        + "".join(f"<li>{html.escape(p['true'])} &rarr; {html.escape(p['predicted'])}: {p['count']}</li>"
                  for p in pairs) + "</ul>"
        for label, (split, pairs) in (confused or {}).items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table.board {{ border-collapse: collapse; font-size: 0.9rem; }}
table.board th, table.board td {{ padding: 0.3rem 0.7rem; border-bottom: 1px solid #ddd; text-align: left; }}
table.board tbody tr:first-child {{ background: #eef6ee; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Generated {datetime.now():%Y-%m-%d %H:%M} from {len(board)} runs; sorted by best validation accuracy.
Figures: <a href="leaderboard.csv">leaderboard.csv</a>, <a href="leaderboard.md">leaderboard.md</a>.</p>
{table}
{images}
</body></html>
"""


"""Run records as rows: read local run directories (and, online, a Comet project) for comparison."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from petlab import rundir
from petlab.config import dotted_to_nested
from petlab.monitor import DEFAULT as DEFAULT_MONITOR
from petlab.monitor import METRICS, Monitor
from petlab.records import RecordError, checked_results
from petlab.tracking.comet import experiment_summaries

log = logging.getLogger(__name__)


@dataclass
class RunRecord:
    run: str  # run directory name (or Comet experiment name)
    config: dict
    results: dict
    history: list[dict] = field(default_factory=list)
    started: datetime | None = None
    source: str = "local"
    path: Path | None = None  # the run directory (local runs)

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def arch(self) -> str:
        return self.config["model"]["arch"]

    @property
    def monitor(self) -> Monitor:
        """What the run was judged by (train.monitor; runs from before it: val accuracy)."""
        return Monitor((self.config.get("train") or {}).get("monitor") or DEFAULT_MONITOR)

    def metrics(self, split: str) -> dict:
        """The split's final metrics, {} when the run has none (results.json keeps "test": null for a
        dataset without a test split, and for runs that did not complete)."""
        return self.results.get(split) or {}

    @property
    def tags(self) -> list[str]:
        return list(self.results.get("tags") or [])

    @property
    def test_copies_in_train(self) -> int | None:
        """Test photos with a near-copy in train (data.leak_check); None when the run did not check."""
        return (self.results.get("test_near_copies_in_train") or {}).get("count")


def read_local_run(run_dir: Path) -> RunRecord | None:
    """A completed run directory as a record; None (with a reason in the log) otherwise. A run whose files
    cannot be read (damaged, unreadable, not what petlab writes) is skipped with a warning that says why, so
    one bad folder never stops a comparison or a promotion over the others."""
    try:
        results = checked_results(json.loads((run_dir / rundir.RESULTS).read_text()), run_dir / rundir.RESULTS)
        config = yaml.safe_load((run_dir / rundir.CONFIG).read_text())
        if not isinstance(config, dict):
            raise ValueError(f"{rundir.CONFIG} must hold a mapping")
        if results.get("status") != "completed":
            log.info("skipping %s: status %s", run_dir, results.get("status"))
            return None
        metrics = run_dir / rundir.METRICS
        history = pd.read_csv(metrics).to_dict("records") if metrics.is_file() else []
        started = results.get("started_at")
        started = datetime.fromisoformat(started) if started else datetime.fromtimestamp(
            (run_dir / rundir.CONFIG).stat().st_mtime)
    except (OSError, ValueError, TypeError, RecordError, yaml.YAMLError, pd.errors.ParserError) as exc:
        log.warning("skipping %s: it cannot be read (%s: %s)", run_dir, type(exc).__name__, str(exc)[:200])
        return None
    return RunRecord(run_dir.name, config, results, history, started, path=run_dir)


def find_local_runs(roots: list[Path]) -> list[RunRecord]:
    """Every completed run under the given folders (a run directory itself counts too)."""
    found = []
    for root in roots:
        for results in sorted(Path(root).glob(f"**/{rundir.RESULTS}")):
            record = read_local_run(results.parent)
            if record:
                found.append(record)
    return found


def find_comet_runs(workspace: str | None, project: str) -> list[RunRecord]:
    """Experiments of a Comet project as records (online only: needs COMET_API_KEY)."""
    records = []
    for exp in experiment_summaries(workspace, project):
        params = {name: yaml.safe_load(str(value)) for name, value in exp["parameters"].items()}
        metrics = {name: float(value) for name, value in exp["metrics"].items() if value not in (None, "")}
        others = exp["others"]
        if "val_accuracy_final" not in metrics:
            continue  # unfinished or not a petlab experiment
        config = dotted_to_nested(params)
        history = _comet_history(exp["curves"])
        results = {"val": {"accuracy": metrics["val_accuracy_final"]}, "tags": exp["tags"],
                   "params_total": int(float(others.get("params_total", 0))),
                   "epochs_completed": len(history), "wall_time_s": float(others.get("wall_time_s", "nan")),
                   "tracking": {"key": exp["id"], "url": exp["url"]},
                   "classes": config.get("dataset", {}).get("classes")}
        if "test_accuracy_final" in metrics:
            results["test"] = {"accuracy": metrics["test_accuracy_final"]}
        started = datetime.fromtimestamp(exp["started_ms"] / 1000) if exp["started_ms"] else None
        records.append(RunRecord(exp["name"] or exp["id"], config, results, history, started, source="comet"))
    return records


def _comet_history(curves: dict[str, list]) -> list[dict]:
    rows: dict[int, dict] = {}
    for name, points in curves.items():
        for epoch, value in points:
            if epoch is not None:
                rows.setdefault(int(epoch), {"epoch": int(epoch)})[name] = value
    return [rows[e] for e in sorted(rows) if len(rows[e]) == 5]


def select(records: list[RunRecord], task: str | None = None, arch: str | None = None, tag: str | None = None,
           since: datetime | None = None, until: datetime | None = None) -> list[RunRecord]:
    def keep(r: RunRecord) -> bool:
        return ((task is None or r.task == task) and (arch is None or r.arch == arch)
                and (tag is None or tag in r.tags)
                and (since is None or (r.started is not None and r.started >= since))
                and (until is None or (r.started is not None and r.started <= until)))

    return [r for r in records if keep(r)]


def leaderboard(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run, best first by the runs' common train.monitor (test is shown, never used to rank)."""
    rows = []
    for r in records:
        model = r.config["model"]
        rows.append({
            "run": r.run,
            "task": r.task,
            "arch": r.arch,
            "pretrained": bool(model.get("pretrained") or model.get("weights")),
            "params": r.results.get("params_total"),
            "epochs": r.results.get("epochs_completed"),
            "wall_time_s": r.results.get("wall_time_s"),
            "monitor": r.monitor.metric,
            # every metric of the table, of the best checkpoint by its monitor: best_val_accuracy, best_val_loss, ...
            **{f"best_{name}": r.metrics("val").get(metric.results_key) for name, metric in METRICS.items()},
            "test_accuracy": r.metrics("test").get("accuracy"),
            "test_top5_accuracy": r.metrics("test").get("top5_accuracy"),
            "test_balanced_accuracy": r.metrics("test").get("balanced_accuracy"),
            # a test accuracy inflated by photos the model trained on is never silent (None: not checked)
            "test_copies_in_train": r.test_copies_in_train,
            "tags": ", ".join(r.tags),
            "source": r.source,
        })
    columns = ["run", "task", "arch", "pretrained", "params", "epochs", "wall_time_s", "monitor",
               *(f"best_{name}" for name in METRICS), "test_accuracy", "test_top5_accuracy", "test_balanced_accuracy",
               "test_copies_in_train", "tags", "source"]
    table = pd.DataFrame(rows, columns=columns)
    ranking = ranking_monitor(records)
    column = f"best_{ranking.metric}"
    return table.sort_values([column, "wall_time_s"], ascending=[ranking.mode == "min", True], kind="stable",
                             ignore_index=True)


def ranking_monitor(records: list[RunRecord]) -> Monitor:
    """What a set of runs is ranked by: their common train.monitor (val accuracy when they differ)."""
    monitors = {r.monitor for r in records}
    return monitors.pop() if len(monitors) == 1 else Monitor()

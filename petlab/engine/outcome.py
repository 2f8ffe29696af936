"""How a run ends: the exceptions that end it early, the outcome a caller gets, and results.json.

Every ending -- completed, interrupted, stopped early (a pruned sweep trial) -- writes results.json
with the same keys, so nothing that reads run records needs to know how a run ended to read it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from petlab import rundir
from petlab.monitor import VAL_ACCURACY

EXIT_INTERRUPTED = 130  # what a shell reports for Ctrl-C


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM arrived; last.pt holds the last completed epoch.

    A BaseException, as KeyboardInterrupt is: the `except Exception` fallbacks a run passes through (an ONNX
    export that falls back to PyTorch, a tracker call that must not stop training) must not swallow it. One
    did: a SIGTERM during the final evaluation's export became "ONNX export failed; exporting it again", and
    the run evaluated on for 30 s before it stopped."""


class StopRun(Exception):
    """Raised by an epoch callback to end a run early on purpose (e.g. a pruned sweep trial)."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RunOutcome:
    status: str  # "completed", "interrupted", or a StopRun's status such as "pruned"
    run_dir: Path
    results: dict = field(default_factory=dict)  # what results.json holds (empty on ranks other than 0)

    @property
    def exit_code(self) -> int:
        """For the scripts: 0, or 130 for an interrupted run (resume it with --resume RUN_DIR)."""
        return EXIT_INTERRUPTED if self.status == "interrupted" else 0


def write_results(run, trainer, status: str, reason: str | None = None, final: dict | None = None,
                  extra: dict | None = None) -> RunOutcome:
    """Close the run's tracking and write results.json (rank 0), with the same keys whatever the status.

    run: the RunContext; trainer: its Trainer (its state holds the epochs, the best one, diagnostics);
    final: {"val": metrics, "test": metrics} of the best checkpoint (completed runs only)."""
    state, final, hooks = trainer.state, final or {}, trainer.hook_results()
    results = {
        **(extra or {}),
        "status": status,
        "reason": reason,
        "epochs_completed": state.epoch,
        "best_epoch": state.best_epoch if state.best_epoch >= 0 else None,
        # NaN (a refit has no val) becomes null
        "best_val_accuracy": None if state.best_epoch <= 0 or math.isnan(state.best.get(VAL_ACCURACY, math.nan))
        else state.best[VAL_ACCURACY],
        "epoch0": state.initial or None,
        "tta": run.cfg.train.tta,
        "stopped_by": state.stopped_by,
        "val": final.get("val"),
        "test": final.get("test"),
        **hooks,  # each mechanism's own part: time_budget, compile_seconds, diagnostics, ...
        "wall_time_s": time.perf_counter() - run.started,
    }
    if not run.is_main:
        return RunOutcome(status, run.run_dir)
    for key, part in hooks.items():  # a hook's record (the time budget's) as Comet's others too
        if isinstance(part, dict):
            run.tracker.log_others({f"{key}.{k}": v for k, v in part.items()})
    run.tracker.log_others({"status": status, "epochs_completed": state.epoch, "wall_time_s": results["wall_time_s"],
                            **({"best_epoch": results["best_epoch"]} if status == "completed" else {})})
    run.tracker.end()  # the offline archive's name is known once tracking ends
    results["tracking"] = run.tracker.record()
    rundir.write_results(run.run_dir, results)
    return RunOutcome(status, run.run_dir, results)

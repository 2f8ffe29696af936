"""Hooks: what a run adds to the training loop without editing it (lightning's callbacks, timm's per-mechanism
objects). A hook overrides the events it needs; the Trainer calls every hook it was handed, in order:
    class StopAtEpoch(Hook):
        def on_epoch_end(self, trainer, row):
            if row["epoch"] >= 3:
                trainer.request_stop("stop_at_epoch_3")     # results.json: "stopped_by": "stop_at_epoch_3"
    run_experiment(cfg, hooks=[StopAtEpoch()])
A hook that raises StopRun ends the run with that status (a sweep's pruning does so).
"""

from __future__ import annotations

from collections.abc import Callable


class Hook:
    def on_fit_start(self, trainer) -> None:
        """Before the first epoch of this fit (a resumed run starts here too, at its next epoch)."""

    def on_epoch_end(self, trainer, row: dict) -> None:
        """After an epoch is trained, validated and recorded (best.pt, last.pt, metrics.csv written); `row` is
        its metrics.csv row. trainer.request_stop(reason) ends training after this epoch."""


class EpochCallback(Hook):
    """A plain function of the epoch's row as a hook (run_experiment's on_epoch)."""

    def __init__(self, fn: Callable[[dict], None]):
        self.fn = fn

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.fn(row)

"""Early stopping, as a hook. (The time budget is budget.py's BudgetHook; Ctrl-C and SIGTERM are signals.py's;
a pruned sweep trial raises StopRun from its epoch callback.)"""

from __future__ import annotations

import logging

from petlab.engine.hooks import Hook
from petlab.monitor import Monitor

log = logging.getLogger("petlab.engine.trainer")


class EarlyStopping(Hook):
    """Ends training once the monitored metric (train.monitor) has not improved for `patience` epochs: the
    trainer counts by the same Monitor that keeps best.pt."""

    def __init__(self, patience: int, monitor: Monitor):
        self.patience, self.monitor = patience, monitor
        self.epochs_without_improvement = 0

    def state_dict(self) -> dict:
        return {"epochs_without_improvement": self.epochs_without_improvement}

    def load_state_dict(self, state: dict) -> None:
        self.epochs_without_improvement = state["epochs_without_improvement"]

    def on_epoch_trained(self, trainer, row: dict) -> None:
        improved = trainer.state.best_epoch == row["epoch"]  # the trainer judged it by the same Monitor
        self.epochs_without_improvement = 0 if improved else self.epochs_without_improvement + 1
        if self.epochs_without_improvement >= self.patience:
            log.info("early stopping: %s has not improved for %d epochs", self.monitor.metric, self.patience)
            trainer.request_stop("early_stopping")

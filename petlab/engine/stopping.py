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

    def stop_reason(self, trainer) -> str | None:
        if trainer.state.epochs_without_improvement < self.patience:
            return None
        log.info("early stopping: %s has not improved for %d epochs", self.monitor.metric, self.patience)
        return "early_stopping"

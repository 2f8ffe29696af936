"""When training ends before its last epoch: early stopping, or the time budget spent. (Ctrl-C and
SIGTERM are signals.py's; a pruned sweep trial raises StopRun from its epoch callback.)"""

from __future__ import annotations

import logging

from petlab.engine.budget import Budget
from petlab.monitor import Monitor

log = logging.getLogger("petlab.engine.trainer")


class StopRules:
    def __init__(self, patience: int | None, budget: Budget | None, monitor: Monitor | None = None):
        self.patience, self.budget, self.monitor = patience, budget, monitor or Monitor()

    def reason(self, epochs_without_improvement: int, epochs_done: int) -> str | None:
        """"early_stopping" (the monitored metric, train.monitor, has not improved for `patience` epochs: the
        trainer counts by the same Monitor that keeps best.pt), "time_budget", or None."""
        if self.patience and epochs_without_improvement >= self.patience:
            log.info("early stopping: %s has not improved for %d epochs", self.monitor.metric, self.patience)
            return "early_stopping"
        if self.budget is not None and self.budget.spent():
            log.info("time budget reached: %.1f s of %.0f s used, %d epochs", self.budget.used(),
                     self.budget.seconds, epochs_done)
            return "time_budget"
        return None

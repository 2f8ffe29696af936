"""What "best" means, in one place: the validation metric a run is judged by, and which way is better.

`train.monitor` names it (default val_accuracy). The trainer keeps best.pt by it, early stopping waits for it
to improve, a sweep's trials optimise it, and promotion chooses among runs by it: each reads this Monitor, so
a run monitored on val_loss keeps, stops, is chosen and is promoted by val_loss alike (timm's
`--eval-metric`, lightning's `monitor` and `mode`). The metric names live here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The validation metrics a run records per epoch (metrics.csv's columns, the epoch row's keys) and for its best
# checkpoint; every module names them through these.
VAL_ACCURACY, VAL_LOSS = "val_accuracy", "val_loss"
METRICS = {VAL_ACCURACY: "max", VAL_LOSS: "min"}  # metric -> which way is better
DEFAULT = VAL_ACCURACY


@dataclass(frozen=True)
class Monitor:
    metric: str = DEFAULT

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; one of {', '.join(METRICS)}")

    @property
    def mode(self) -> str:
        return METRICS[self.metric]

    @property
    def direction(self) -> str:
        """Optuna's word for the mode."""
        return "maximize" if self.mode == "max" else "minimize"

    @property
    def key(self) -> str:
        """The metric's key in results.json's split entries (val_loss -> loss)."""
        return self.metric.removeprefix("val_")

    @property
    def tie_breaker(self) -> Monitor:
        """The other metric: it decides between equal values (accuracy ties often, on small validation sets)."""
        return Monitor(next(m for m in METRICS if m != self.metric))

    def worst(self) -> float:
        return -math.inf if self.mode == "max" else math.inf

    def better(self, value: float, than: float) -> bool:
        return value > than if self.mode == "max" else value < than

    def improved(self, row: dict, best: dict) -> bool:
        """Whether an epoch's metrics (row) beat the best so far (best: the same keys, or {} before the first); a
        row without validation (NaN: a refit on all of train) always counts as the latest best."""
        value = row[self.metric]
        if math.isnan(value) or not best:
            return True
        if value == best[self.metric]:
            other = self.tie_breaker
            return other.better(row[other.metric], best[other.metric])
        return self.better(value, best[self.metric])

    def sort_key(self, value: float) -> float:
        """For sorting best first."""
        return -value if self.mode == "max" else value

    def best_of(self, rows: list[dict]) -> dict:
        """The best of rows keyed as results.json's split entries ("accuracy", "loss"), ties broken by the other
        metric, then by order (the first)."""
        other = self.tie_breaker
        return min(rows, key=lambda r: (self.sort_key(r[self.key]), other.sort_key(r[other.key])))

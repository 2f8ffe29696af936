"""What "best" means, in one place: the validation metric a run is judged by, and which way is better.

`train.monitor` names it (default val_accuracy). The trainer keeps best.pt by it, early stopping waits for it
to improve, a sweep's trials optimise it, and promotion chooses among runs by it: each reads this Monitor, so
a run monitored on val_loss keeps, stops, is chosen and is promoted by val_loss alike (timm's
`--eval-metric`, lightning's `monitor` and `mode`).

A metric is one entry in one table, METRICS: its name (the epoch row's key, metrics.csv's column, Comet's
name), which way is better, how an epoch's validation predictions give it, its key in results.json's split
entries, and which metric breaks its ties. The trainer computes every entry each epoch and keeps the best
epoch's values by name; so a metric added to the table (`register`) can be monitored end to end -- best.pt,
early stopping, resume, a sweep's objective, promotion and the reports -- with no other file touched
(tests/test_best_and_hooks.py does it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str  # "val_accuracy": the epoch row's key and metrics.csv's column
    mode: str  # "max" or "min": which way is better
    of_validation: Callable  # (targets [n], probabilities [n, classes], mean loss) -> the value
    results_key: str  # its key in results.json's split entries (the best checkpoint's val and test metrics)
    tie_breaker: str  # the metric that decides between equal values (accuracy ties often on small val sets)


def _accuracy(targets, probabilities, loss) -> float:
    return float((np.asarray(targets) == np.asarray(probabilities).argmax(1)).mean())


VAL_ACCURACY, VAL_LOSS = "val_accuracy", "val_loss"
METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Adds a metric to the table (a name already there is replaced)."""
    if metric.mode not in ("max", "min"):
        raise ValueError(f"metric {metric.name}: mode is max or min, not {metric.mode!r}")
    METRICS[metric.name] = metric
    return metric


register(Metric(VAL_ACCURACY, "max", _accuracy, "accuracy", tie_breaker=VAL_LOSS))
register(Metric(VAL_LOSS, "min", lambda targets, probabilities, loss: float(loss), "loss", tie_breaker=VAL_ACCURACY))
DEFAULT = VAL_ACCURACY


def metric_names() -> tuple[str, ...]:
    """The table's names (config's train.monitor choices: read when a config is checked, so a registered one counts)."""
    return tuple(METRICS)


def validation_metrics(targets, probabilities, loss: float) -> dict[str, float]:
    """Every metric of an epoch's validation pass; NaN for each when there was none (a refit on all of train)."""
    if len(targets) == 0:
        return {name: math.nan for name in METRICS}
    return {name: m.of_validation(targets, probabilities, loss) for name, m in METRICS.items()}


@dataclass(frozen=True)
class Monitor:
    metric: str = DEFAULT

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; one of {', '.join(METRICS)}")

    @property
    def mode(self) -> str:
        return METRICS[self.metric].mode

    @property
    def direction(self) -> str:
        """Optuna's word for the mode."""
        return "maximize" if self.mode == "max" else "minimize"

    @property
    def key(self) -> str:
        """The metric's key in results.json's split entries (val_loss -> loss)."""
        return METRICS[self.metric].results_key

    @property
    def tie_breaker(self) -> Monitor:
        """The metric that decides between equal values (accuracy ties often, on small validation sets)."""
        return Monitor(METRICS[self.metric].tie_breaker)

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

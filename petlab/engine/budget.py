"""Budgeted training (`--time-budget 10m`): the best model you can have in a given time.

Training ends at the budget, and the learning-rate schedule anneals to that deadline instead of to
an epoch count: its progress is the share of the budget used, measured as training goes (the
measured step rate, in effect), less the time the final validation pass is expected to take (the
last one's). So the schedule reaches its end just as training stops, whatever the machine's speed.
The budget used is checkpointed with the training state, so a resumed run spends only what is left.
"""

from __future__ import annotations

import math
import time

from petlab.config import parse_duration

__all__ = ["Budget", "lr_factor", "parse_duration"]


def _cosine(start: float, end: float, t: float) -> float:
    return end + (start - end) / 2 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def lr_factor(scheduler: str, progress: float, warmup: float) -> float:
    """The learning rate as a multiple of the configured one at `progress` (0..1) of the run, in the shapes
    torch's schedulers have with petlab's settings: CosineAnnealingLR to 0; OneCycleLR's defaults (cosine
    from lr/25 up to lr over the warm-up share, then down to lr/25/1e4)."""
    if scheduler == "cosine":
        return _cosine(1.0, 0.0, progress)
    if scheduler == "onecycle":
        if progress < warmup:
            return _cosine(1 / 25, 1.0, progress / warmup)
        return _cosine(1.0, 1 / 25 / 1e4, (progress - warmup) / (1 - warmup))
    return 1.0


class Budget:
    def __init__(self, seconds: float, used: float = 0.0):
        self.seconds = seconds
        self.used_before = used  # spent by earlier parts of a resumed run
        self.reserve = 0.0  # seconds kept for the last validation pass (the last one's duration)
        self._started: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def used(self) -> float:
        return self.used_before + (time.perf_counter() - self._started if self._started is not None else 0.0)

    def progress(self) -> float:
        """Share of the training time used: 1 when training must stop to leave time for validation."""
        return min(1.0, self.used() / max(self.seconds - self.reserve, 1e-9))

    def spent(self) -> bool:
        return self.progress() >= 1.0

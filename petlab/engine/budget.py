"""Budgeted training (`--time-budget 10m`): the best model you can have in a given time.

Training ends at the budget, and the learning-rate schedule anneals to that deadline instead of to
an epoch count: its progress is the share of the budget used, measured as training goes (the
measured step rate, in effect), less the time the final validation pass is expected to take (the
last one's); when an epoch's steps will end too close to that cut-off for another epoch to train, the
schedule ends with them. So the schedule reaches its end just as training stops, whatever the
machine's speed.
The budget used is checkpointed with the training state, so a resumed run spends only what is left.
"""

from __future__ import annotations

import logging
import math
import time

from petlab.config import parse_duration
from petlab.engine.hooks import BatchAt, Hook, Validation

__all__ = ["Budget", "BudgetHook", "lr_factor", "parse_duration"]

log = logging.getLogger("petlab.engine.trainer")


WARMUP_START = 0.01  # a warm-up starts at lr / 100 and rises linearly to lr (LinearLR's start_factor)


def _cosine(start: float, end: float, t: float) -> float:
    return end + (start - end) / 2 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def lr_factor(scheduler: str, progress: float, warmup: float) -> float:
    """The learning rate as a multiple of the configured one at `progress` (0..1) of the run, in the shapes
    torch's schedulers have with petlab's settings: an optional linear warm-up from lr/100, then
    CosineAnnealingLR to 0 (or constant); OneCycleLR's defaults (cosine from lr/25 up to lr over the warm-up
    share, then down to lr/25/1e4)."""
    if scheduler == "onecycle":
        if progress < warmup:
            return _cosine(1 / 25, 1.0, progress / warmup)
        return _cosine(1.0, 1 / 25 / 1e4, (progress - warmup) / (1 - warmup))
    if progress < warmup:  # a linear warm-up, as LinearLR does without a budget
        return WARMUP_START + (1 - WARMUP_START) * progress / warmup
    if scheduler == "cosine":
        return _cosine(1.0, 0.0, (progress - warmup) / (1 - warmup))
    return 1.0


# Before the first validation pass has been timed, its time is estimated from the training steps: an
# evaluation batch costs about this share of a training batch's time per image (forward only, no
# augmentation). Measured here on the custom CNN: 3.9 s per eval batch of 64 vs 5.1 s per train batch
# of 32, i.e. 0.38.
EVAL_SHARE = 0.4


class Budget:
    def __init__(self, seconds: float, used: float = 0.0, clock=time.perf_counter):
        self.seconds = seconds
        self.clock = clock  # seconds, monotonic; a test drives a simulated one
        self.used_before = used  # spent by earlier parts of a resumed run
        self.reserve = 0.0  # seconds kept for the last validation pass (the last one's duration)
        self.reserve_measured = False
        self.epoch_end: float | None = None  # budget time at which this epoch's training steps should end
        self._started: float | None = None

    def estimate_reserve(self, seconds_per_train_image: float, val_images: int) -> None:
        """Until a validation pass has been timed, reserve its estimated duration."""
        if not self.reserve_measured:
            self.reserve = EVAL_SHARE * seconds_per_train_image * val_images

    def measured_reserve(self, seconds: float) -> None:
        self.reserve, self.reserve_measured = seconds, True

    def start(self) -> None:
        self._started = self.clock()

    def used(self) -> float:
        return self.used_before + (self.clock() - self._started if self._started is not None else 0.0)

    def expect_epoch_end(self, seconds_from_now: float | None) -> None:
        """Where this epoch's training steps will end, at the rate so far (None: not known yet)."""
        self.epoch_end = None if seconds_from_now is None else self.used() + seconds_from_now

    def cutoff(self) -> float:
        """The budget time after which no training step may start: the last validation pass must still fit."""
        return self.seconds - self.reserve

    def horizon(self) -> float:
        """Where the schedule ends: the cut-off, or the end of this epoch's steps when no training can follow
        them (its validation pass will take the epoch past the cut-off). Without the second case, an epoch
        that ends naturally just short of the cut-off would stop training with the schedule unfinished. Only
        once a validation pass has been timed: an estimate (from the training steps' speed, before the first
        pass) that is too long, on a machine whose load changes, ended the schedule an epoch early, and the
        next epoch then trained at a learning rate risen from near 0."""
        if self.reserve_measured and self.epoch_end is not None and self.epoch_end + self.reserve >= self.cutoff():
            return min(self.cutoff(), self.epoch_end)
        return self.cutoff()

    def progress(self) -> float:
        """Share of the schedule's time used: 1 at its horizon."""
        return min(1.0, self.used() / max(self.horizon(), 1e-9))

    def spent(self) -> bool:
        return self.used() >= self.cutoff()


class BudgetHook(Hook):
    """The budget in the training loop: its clock runs from the fit's start on top of what a resumed run had
    spent; training steps stop at the cut-off, with the last validation pass's time kept in reserve (estimated
    from the training steps until one has been timed); the time used is saved with each epoch; training ends
    once the budget is spent. The schedule reads the same Budget (engine/step.py)."""

    def __init__(self, budget: Budget, val_images: int):
        self.budget, self.val_images = budget, val_images
        self.used_s = 0.0  # budget time spent by the epochs recorded so far (kept across resumes)

    def state_dict(self) -> dict:
        return {"used_s": self.used_s}

    def load_state_dict(self, state: dict) -> None:
        self.used_s = state["used_s"]

    def results(self, trainer) -> dict:
        state = trainer.state
        return {"time_budget": {
            "budget_s": self.budget.seconds, "used_s": self.used_s, "reached": state.stopped_by == "time_budget",
            "epochs_completed": state.epoch, "reserved_s": self.budget.reserve,  # kept for the last validation
            "trained_images": round(sum(r["images_per_second"] * r["train_seconds"] for r in state.history))}}

    def _stop_if_spent(self, trainer, now: bool = False) -> None:
        if self.budget.spent():
            if not now:
                log.info("time budget reached: %.1f s of %.0f s used, %d epochs", self.budget.used(),
                         self.budget.seconds, trainer.state.epoch)
            trainer.request_stop("time_budget", now=now)

    def on_fit_start(self, trainer) -> None:
        self.budget.used_before = self.used_s  # only what is left of the budget
        self.budget.start()
        self._stop_if_spent(trainer)  # a resumed run whose budget is spent trains no more

    def before_step(self, trainer, at: BatchAt) -> None:
        if at.seen:
            self.budget.estimate_reserve(at.profile.elapsed() / at.seen, self.val_images)
        self._stop_if_spent(trainer, now=True)

    def on_batch_start(self, trainer, at: BatchAt) -> None:
        # where this epoch's steps will end, at this epoch's rate so far: the schedule's horizon
        self.budget.expect_epoch_end((at.steps - at.step) * at.profile.elapsed() / at.step if at.step else None)

    def on_validation_end(self, trainer, val: Validation) -> None:
        self.budget.measured_reserve(val.seconds)  # the last validation must fit in the budget too

    def on_epoch_trained(self, trainer, row: dict) -> None:
        self.used_s = self.budget.used()

    def on_epoch_end(self, trainer, row: dict) -> None:
        self._stop_if_spent(trainer)  # checked last, once the epoch is written: no epoch starts past the cut-off

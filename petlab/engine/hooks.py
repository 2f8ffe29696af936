"""Hooks: what a run adds to the training loop without editing it (lightning's callbacks, timm's per-mechanism
objects). Every mechanism of a run is one: early stopping, the time budget, compile timing, diagnostics, the
profiler trace, the progress bar, batch logging (engine/trainer.py standard_hooks builds them from their config
sections), then a run's own, then what records an epoch once every hook has seen it: checkpointing, the epoch
log and the Ctrl-C/SIGTERM check (recording_hooks). A hook overrides the events it needs; the Trainer calls
every hook in that order:
    class StopAtEpoch(Hook):
        def on_epoch_end(self, trainer, row):
            if row["epoch"] >= 3:
                trainer.request_stop("stop_at_epoch_3")     # results.json: "stopped_by": "stop_at_epoch_3"
    run_experiment(cfg, hooks=[StopAtEpoch()])
One way to stop training, from any event: trainer.request_stop(reason), after this epoch, or with now=True
at the next optimizer step (before_step); `reason` is results.json's stopped_by and the first asked is kept.
A hook that raises StopRun ends the run itself, with that status (a sweep's pruning does so); a signal ends
it as interrupted (signals.py). Cross-validation keeps
its held-out predictions with on_validation_end, and the learning-rate range test is a hook too.

A hook owns its state, as lightning's Callback does: `state_dict()` is saved in last.pt under its `state_key`
(the class's name unless set) and given back to `load_state_dict()` on --resume, and `results()` is its part
of results.json. So a stateful mechanism is a hook alone, with no edit to the trainer, the checkpoint or the
outcome (tests/test_best_and_hooks.py has one that survives a kill and a resume).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class BatchAt:
    """Where the training loop is, as each hook sees it. With --accumulate N a group of N batches makes one
    optimizer step; logging and checks count optimizer steps."""
    epoch: int  # 0-based
    step: int  # the batch, in this epoch
    steps: int  # batches in this epoch
    opt_step: int  # the optimizer step this batch belongs to
    group_start: bool  # the first batch of its group
    group_end: bool  # the last: the optimizer steps after it
    group_size: int  # batches in this group (the epoch's last may be short)
    logged_group: bool  # this optimizer step's group is logged (tracking.log_every_steps)
    seen: int  # training images before this batch
    profile: Any  # the epoch's EpochProfile (engine/profiling.py)
    totals: Any  # the epoch's running loss and correct count so far (engine/trainer.py EpochTotals)
    loss: Any = None  # the batch's loss tensor, after the forward pass
    lr: float | None = None
    grad_norm: float | None = None  # after the group's optimizer step, where a hook or the log read it

    @property
    def logged(self) -> bool:
        """The last batch of a logged group, where its optimizer step and its log happen."""
        return self.group_end and self.logged_group

    @property
    def first_of_run(self) -> bool:
        return self.epoch == 0 and self.step == 0


@dataclass
class Validation:
    """An epoch's validation pass, as on_validation_end sees it."""
    epoch: int  # 1-based: the epoch just trained
    targets: Any  # np.ndarray of class indices
    probabilities: Any  # np.ndarray [photos, classes]
    loss: float
    seconds: float


class Hook:
    state_key: str | None = None  # where last.pt keeps this hook's state (default: the class's name)

    @property
    def key(self) -> str:
        return self.state_key or type(self).__name__

    def state_dict(self) -> dict:
        """What a resumed run needs of this hook (JSON-like values); saved in last.pt after every epoch."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """On --resume, before on_fit_start: what state_dict returned when last.pt was written."""

    def results(self, trainer) -> dict:
        """This hook's keys in results.json, at any ending (completed, interrupted, stopped)."""
        return {}

    def on_fit_start(self, trainer) -> None:
        """Before the first epoch of this fit (a resumed run starts here too, with its state restored)."""

    def on_train_epoch_start(self, trainer, epoch: int) -> None:
        """Before an epoch's first training batch."""

    def before_step(self, trainer, at: BatchAt) -> None:
        """Between optimizer steps (under torchrun only at logged ones, every rank at the same step), where
        trainer.request_stop(reason, now=True) ends this epoch's training, once any rank asked."""

    def on_batch_start(self, trainer, at: BatchAt) -> None:
        """Before a batch's forward pass."""

    def needs_grad_norm(self, trainer, at: BatchAt) -> bool:
        """Whether this group's optimizer step should read the gradient norm (a host sync on CUDA)."""
        return False

    def on_batch_end(self, trainer, at: BatchAt) -> None:
        """After a batch's backward pass (and, at a group's end, the optimizer step): at.loss, at.grad_norm."""

    def on_train_epoch_end(self, trainer, epoch: int) -> None:
        """After an epoch's training batches, before validation."""

    def on_validation_end(self, trainer, val: Validation) -> None:
        """After an epoch's validation pass: its predictions, loss and time."""

    def on_epoch_trained(self, trainer, row: dict) -> None:
        """After an epoch is trained, validated and added to trainer.state.history (its best and best_epoch
        already say whether it is the best so far), inside the write that a signal may not cut short. The
        recording hooks come last, so what a hook keeps (its state_dict) is saved in last.pt with it."""

    def on_epoch_end(self, trainer, row: dict) -> None:
        """After an epoch is trained, validated and recorded (best.pt, last.pt, metrics.csv written); `row` is
        its metrics.csv row."""

    def on_fit_end(self, trainer) -> None:
        """After the last epoch of a fit that ran to its end (not after a stop by exception), trainer.state.finished
        set, inside a write that a signal may not cut short."""


"""Ctrl-C and SIGTERM end a run within seconds, wherever it is, and leave it resumable.

Nothing a run computes between two writes is worth waiting for: an interrupted epoch is rerun from
last.pt on resume (every epoch reseeds from (seed, epoch)), and an evaluation or a feature extraction
only reads. So the signal raises `Interrupted` at once, at the next Python bytecode (a batch's forward
pass is cut short between two layers, not after the batch). Only while something is being written --
checkpoints, metrics.csv, results.json -- is it deferred, inside `stop.deferred()`, and raised when that
block ends. A second Ctrl-C raises KeyboardInterrupt at once.

Under torchrun every process must stop at the same step (stopping alone would leave the others inside
a collective), so there the signal only sets `requested`, which SignalStop, a hook, agrees on at the loop's
log steps.
"""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager

from petlab.engine.hooks import BatchAt, Hook
from petlab.engine.outcome import Interrupted

log = logging.getLogger(__name__)


class StopFlag:
    def __init__(self, immediate: bool = True):
        self.requested = False
        self.immediate = immediate
        self._deferring = 0
        self._pending = False  # a signal came inside deferred(): raised when the block ends
        self._previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.immediate and not self._deferring:
            log.warning("received %s: stopping now", name)
            raise Interrupted(name)
        self._pending = self.immediate
        log.warning("received %s: stopping %s", name,
                    "once this write is done" if self.immediate else "at the next step every process agrees on")

    @contextmanager
    def deferred(self):
        """A block a signal must not cut short (a write): it is raised, if one came, when the block ends."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if self._pending and not self._deferring:
            self._pending = False
            raise Interrupted("signal received during a write")

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class SignalStop(Hook):
    """Ctrl-C or SIGTERM that the flag only recorded (under torchrun, or during a write): the run ends at the next
    step every rank agrees on, or after the epoch is recorded. trainer.stop_flag is the fit's StopFlag."""

    def before_step(self, trainer, at: BatchAt) -> None:
        if trainer.dist.any(trainer.stop_flag.requested):  # a collective: every rank asks at the same step
            raise Interrupted

    def on_epoch_end(self, trainer, row: dict) -> None:
        if trainer.stop_flag.requested:
            raise Interrupted

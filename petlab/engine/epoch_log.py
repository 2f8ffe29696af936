"""Where an epoch's metrics go: metrics.csv (rewritten whole after every epoch), the tracker, one log line; and
where the batches' go: the progress bar and the tracker every tracking.log_every_steps optimizer steps."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from petlab.engine.hooks import BatchAt, Hook
from petlab.fileio import write_csv
from petlab.monitor import METRICS as METRIC_TABLE
from petlab.monitor import VAL_ACCURACY, VAL_LOSS
from petlab.progress import progress
from petlab.rundir import METRICS
from petlab.tracking import Tracker

log = logging.getLogger("petlab.engine.trainer")  # cross-validation quietens this logger for its folds

PROFILE_COLUMNS = ["epoch_seconds", "images_per_second", "train_seconds", "data_seconds", "compute_seconds",
                   "data_wait_fraction", "cpu_utilisation", "peak_rss_mb"]


def metric_columns() -> list[str]:
    """metrics.csv's columns: the training figures, every validation metric of monitor.METRICS, the profile."""
    return ["epoch", "train_loss", "train_accuracy", *METRIC_TABLE, "lr", *PROFILE_COLUMNS]


def write_metrics_csv(path: Path, history: list[dict], initial: dict | None = None) -> None:
    """One row per epoch; with `initial`, an epoch-0 row first: val and test before any training."""
    per_epoch = metric_columns()
    columns = per_epoch + (["test_loss", "test_accuracy"] if initial else [])
    rows = [{k: row[k] for k in per_epoch} for row in history]
    if initial:
        rows.insert(0, {"epoch": 0, **{f"{split}_{m}": initial[split][m] for split in initial
                                        for m in ("loss", "accuracy")}})
    write_csv(path, rows, columns)


class EpochLog(Hook):
    """Each recorded epoch: metrics.csv, the tracker and the log line. run_dir None (a cross-validation fold) or
    a rank other than 0 writes no file."""

    def __init__(self, run_dir: Path | None, writes_files: bool, tracker: Tracker):
        self.run_dir, self.writes_files, self.tracker = run_dir, writes_files and run_dir is not None, tracker

    def on_epoch_trained(self, trainer, row: dict) -> None:
        state, epoch = trainer.state, row["epoch"]
        if self.writes_files:
            write_metrics_csv(self.run_dir / METRICS, state.history, state.initial)
        self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"},
                                 step=epoch * trainer.steps_per_epoch, epoch=epoch)
        best = " *best*" if state.best_epoch == epoch else ""
        val = "no val (refit on all of train)" if math.isnan(row[VAL_ACCURACY]) else (
            f"val loss {row[VAL_LOSS]:.4f} acc {row[VAL_ACCURACY]:.3f}{best}")
        log.info("epoch %d%s  train loss %.4f acc %.3f | %s | lr %.2e | %.1fs, %.1f img/s", epoch,
                 trainer.epochs_text(), row["train_loss"], row["train_accuracy"], val, row["lr"],
                 row["epoch_seconds"], row["images_per_second"])


class EpochBar(Hook):
    """An epoch's progress bar: the running loss and accuracy at each logged optimizer step (read then, so no
    other step waits for the device)."""

    def on_train_epoch_start(self, trainer, epoch: int) -> None:
        self.bar = progress(total=trainer.steps_per_epoch, desc=f"epoch {epoch + 1}{trainer.epochs_text()}",
                            unit="batch", leave=False)

    def on_batch_end(self, trainer, at: BatchAt) -> None:
        if at.logged:
            loss, accuracy = at.totals.means()
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.3f}")
            self.bar.set_description(f"epoch {at.epoch + 1}{trainer.epochs_text()}", refresh=False)
        self.bar.update()

    def on_train_epoch_end(self, trainer, epoch: int) -> None:
        self.bar.close()


class BatchLog(Hook):
    """Every tracking.log_every_steps optimizer steps: the batch's loss, lr and gradient norm to the tracker."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_batch_end(self, trainer, at: BatchAt) -> None:
        if at.logged:
            self.tracker.log_metrics({"batch_loss": at.loss.item(), "lr": at.lr, "grad_norm": at.grad_norm},
                                     step=at.epoch * at.steps + at.step, epoch=at.epoch + 1)

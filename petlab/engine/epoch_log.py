"""Where an epoch's metrics go: metrics.csv (rewritten whole after every epoch), the tracker, one log line."""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from petlab.engine.hooks import BatchAt, Hook
from petlab.fileio import atomic_write
from petlab.rundir import METRICS
from petlab.tracking import Tracker

log = logging.getLogger("petlab.engine.trainer")  # cross-validation quietens this logger for its folds

METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                  "epoch_seconds", "images_per_second", "train_seconds", "data_seconds", "compute_seconds",
                  "data_wait_fraction", "cpu_utilisation", "peak_rss_mb"]


def write_metrics_csv(path: Path, history: list[dict], initial: dict | None = None) -> None:
    """One row per epoch; with `initial`, an epoch-0 row first: val and test before any training."""
    columns = METRIC_COLUMNS + (["test_loss", "test_accuracy"] if initial else [])
    rows = [{k: row[k] for k in METRIC_COLUMNS} for row in history]
    if initial:
        rows.insert(0, {"epoch": 0, **{f"{split}_{m}": initial[split][m] for split in initial
                                        for m in ("loss", "accuracy")}})
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue())


class EpochLog:
    """run_dir None (a cross-validation fold) or a rank other than 0 writes no file."""

    def __init__(self, run_dir: Path | None, writes_files: bool, tracker: Tracker, steps_per_epoch: int):
        self.run_dir, self.writes_files = run_dir, writes_files and run_dir is not None
        self.tracker, self.steps_per_epoch = tracker, steps_per_epoch

    def write(self, row: dict, history: list[dict], initial: dict, improved: bool, of_epochs: str) -> None:
        epoch = row["epoch"]
        if self.writes_files:
            write_metrics_csv(self.run_dir / METRICS, history, initial)
        self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"},
                                 step=epoch * self.steps_per_epoch, epoch=epoch)
        val = "no val (refit on all of train)" if math.isnan(row["val_accuracy"]) else (
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}{' *best*' if improved else ''}")
        log.info("epoch %d%s  train loss %.4f acc %.3f | %s | lr %.2e | %.1fs, %.1f img/s", epoch, of_epochs,
                 row["train_loss"], row["train_accuracy"], val, row["lr"], row["epoch_seconds"],
                 row["images_per_second"])


class BatchLog(Hook):
    """Every tracking.log_every_steps optimizer steps: the batch's loss, lr and gradient norm to the tracker."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_batch_end(self, trainer, at: BatchAt) -> None:
        if at.logged:
            self.tracker.log_metrics({"batch_loss": at.loss.item(), "lr": at.lr, "grad_norm": at.grad_norm},
                                     step=at.epoch * at.steps + at.step, epoch=at.epoch + 1)

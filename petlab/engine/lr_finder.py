"""The learning-rate range test (Smith 2015; fastai's lr_find): train with an exponentially rising learning
rate for a few hundred steps on the real data, watch the loss, and suggest the rate where it falls fastest.

The loss is smoothed (an exponential moving average with bias correction, as fastai does); the sweep stops
early once the smoothed loss exceeds 4 x its minimum (diverged). The suggestion is the rate at the steepest
descent of the smoothed loss against log(lr), over the part of the sweep before the minimum.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from petlab.engine.batches import batches_per_epoch
from petlab.engine.context import RunContext
from petlab.engine.experiment import build_run_model, run_loaders
from petlab.engine.hooks import BatchAt, Hook
from petlab.engine.trainer import Trainer
from petlab.fileio import write_json
from petlab.reports.figures import plot_lr_find

log = logging.getLogger(__name__)
SMOOTHING = 0.98
DIVERGED = 4.0


def suggest_lr(lrs: list[float], smoothed: list[float]) -> float:
    """The rate at the steepest fall of the smoothed loss (per unit of log lr), before the loss minimum."""
    stop = int(np.argmin(smoothed)) + 1
    if stop < 3:
        return lrs[0]
    slopes = np.gradient(np.asarray(smoothed[:stop]), np.log(np.asarray(lrs[:stop])))
    return float(lrs[int(np.argmin(slopes))])


class RangeTest(Hook):
    """The range test as a hook of an ordinary fit: each optimizer step's loss at its lr, smoothed; the fit ends
    once `steps` were taken or the smoothed loss diverged."""

    def __init__(self, steps: int):
        self.steps, self.lrs, self.losses, self.smoothed, self._average = steps, [], [], [], 0.0
        self.diverged = False

    @property
    def done(self) -> bool:
        return self.diverged or len(self.lrs) >= self.steps

    def before_step(self, trainer, at: BatchAt) -> None:
        if self.done:
            trainer.request_stop("lr_range_test", now=True)

    def on_batch_end(self, trainer, at: BatchAt) -> None:
        value = at.loss.item()
        self._average = SMOOTHING * self._average + (1 - SMOOTHING) * value
        self.lrs.append(at.lr)
        self.losses.append(value)
        self.smoothed.append(self._average / (1 - SMOOTHING ** len(self.lrs)))
        if not math.isfinite(value) or self.smoothed[-1] > DIVERGED * min(self.smoothed):
            log.info("lr range test: the loss diverged at lr %.2e (step %d)", at.lr, len(self.lrs) - 1)
            self.diverged = True



def find_lr(run: RunContext, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200) -> dict:
    """Runs the range test; writes lr_find.png and lr_find.json to the run directory and logs both."""
    cfg = run.cfg
    model, _ = build_run_model(run)
    train = {"train": run_loaders(run, model)["train"]}  # no validation: the loss of each step is the measure
    # The run's own Trainer, step and hooks (frozen layers and BatchNorm, precision, mixing, clipping, DDP) at a
    # rising lr: no schedule, warm-up, EMA, budget, accumulation or early stopping of its own, enough epochs for
    # `steps` (the hook ends the fit), and a step every rank agrees on under torchrun. The backbone keeps its
    # lr ratio.
    epochs = math.ceil(steps / batches_per_epoch(train["train"], cfg.train.limit_batches))
    sweep_cfg = cfg.updated({"train.lr": start_lr, "train.scheduler": "none", "train.warmup_epochs": 0,
                             "train.time_budget": None, "train.ema": None, "train.accumulate": 1,
                             "train.epochs": epochs, "train.early_stopping_patience": None,
                             "tracking.log_every_steps": 1, "diagnostics.enabled": False})
    test = RangeTest(steps)
    trainer = Trainer(sweep_cfg, model, run.pre, train, None, run.splits.classes, device=run.device,
                      features=run.features, dist=run.dist, hooks=[test])
    step = trainer.step
    start_lrs = [g["lr"] for g in step.optimizer.param_groups]
    # ExponentialLR multiplies every step: start_lr * gamma^steps = end_lr
    step.scheduler = torch.optim.lr_scheduler.ExponentialLR(step.optimizer, gamma=(end_lr / start_lr) ** (1 / steps))
    trainer.fit()
    lrs, losses, smoothed = test.lrs, test.losses, test.smoothed
    suggestion = suggest_lr(lrs, smoothed)
    min_loss_lr = float(lrs[int(np.argmin(smoothed))])
    result = {"suggestion": suggestion, "min_loss_lr": min_loss_lr, "configured_lr": cfg.train.lr,
              "start_lr": start_lr, "end_lr": end_lr, "steps": len(lrs), "start_lrs": start_lrs,
              "lrs": lrs, "losses": losses, "smoothed": smoothed}
    figure = run.run_dir / "lr_find.png"
    if run.is_main:
        plot_lr_find(lrs, losses, smoothed, suggestion, cfg.train.lr, figure,
                     f"{cfg.model.arch} on {cfg.data.dataset}: lr range test")
        write_json(run.run_dir / "lr_find.json", result)
        run.tracker.log_others({"lr_find_suggestion": suggestion, "lr_find_min_loss_lr": min_loss_lr})
        run.tracker.log_image(figure, "lr_find")
        run.tracker.end()
    log.info("lr range test: suggested lr %.2e (steepest descent; loss minimum at %.2e; configured %.2e) -> %s",
             suggestion, min_loss_lr, cfg.train.lr, figure)
    return result


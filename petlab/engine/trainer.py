"""The training loop: epochs, early stopping, checkpoints, and clean interruption.

Every epoch reseeds all RNGs from (seed, epoch), and `last.pt` is written at the end of each
epoch. An interrupted epoch is therefore simply run again on resume, and a resumed run ends
with exactly the weights an uninterrupted one would have.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from petlab.config import Config
from petlab.data.transforms import Preprocessing
from petlab.engine.batches import batches_per_epoch, predict_loader, seed_everything
from petlab.engine.budget import Budget, BudgetHook, parse_duration
from petlab.engine.checkpoint import Checkpointing, CheckpointSaver
from petlab.engine.diagnostics import DiagnosticsHook
from petlab.engine.distributed import Distributed, gather_predictions
from petlab.engine.epoch_log import BatchLog, EpochBar, EpochLog
from petlab.engine.hooks import BatchAt, Hook, Validation
from petlab.engine.imbalance import class_weights, dataset_labels
from petlab.engine.profiling import CompileTimer, EpochProfile, TorchTrace
from petlab.engine.signals import SignalStop, StopFlag
from petlab.engine.speed import predicting_runtime
from petlab.engine.step import TrainStep
from petlab.engine.stopping import EarlyStopping
from petlab.engine.trainable import Trainable
from petlab.errors import ConfigError
from petlab.export.onnx import CheckedOnnx
from petlab.monitor import METRICS, Monitor, validation_metrics
from petlab.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What the loop itself knows. Every mechanism's own state (early stopping's patience, the time budget
    spent, compile time, diagnostics) lives in its hook (Hook.state_dict), saved beside this in last.pt."""
    epoch: int = 0  # epochs completed
    history: list[dict] = field(default_factory=list)  # each epoch's metrics row
    best: dict[str, float] = field(default_factory=dict)  # each metric (monitor.METRICS) at the best epoch
    best_epoch: int = -1  # by train.monitor; 0: the model as initialised (cross-validation chose no training)
    finished: bool = False  # all epochs done or stopped early: nothing left to resume
    stopped_by: str | None = None  # the reason a stop was asked for ("time_budget", "early_stopping", ...)
    initial: dict = field(default_factory=dict)  # {"val": {...}, "test": {...}} before any training (epoch 0)

    @classmethod
    def from_saved(cls, saved: dict) -> TrainState:
        """A last.pt's state; one written before hooks kept their own (best_val_accuracy and the like) is read
        as far as it goes, its mechanisms' state starting afresh."""
        known = {k: v for k, v in saved.items() if k in cls.__dataclass_fields__}
        if "best" not in saved:
            known["best"] = {m: saved[f"best_{m}"] for m in METRICS if f"best_{m}" in saved}
        return cls(**known)


class EpochTotals:
    """An epoch's running training loss and correct count, added up on the device: read (a host sync on CUDA)
    only where the log or a hook asks."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.seen = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss += loss.detach() * len(targets)
        self.correct += (logits.detach().argmax(1) == targets).sum()
        self.seen += len(targets)

    def means(self) -> tuple[float, float]:
        """(mean loss, accuracy) so far."""
        return self.loss.item() / max(self.seen, 1), self.correct.item() / max(self.seen, 1)


class Trainer:
    """Trains one model on its loaders: the epoch loop and validation, over small objects that each own one
    mechanism: what trains (trainable.py: the model or its head, freezing, DDP, compile), the training step
    (step.py: loss, optimizer, schedule, scaler, clipping, EMA) and the hooks (hooks.py), which are everything
    else: early stopping, the time budget, diagnostics, profiling, the progress bar and batch log, and -- after
    a run's own hooks -- checkpointing, the epoch log and the signal check. `trainable`, `step` and `saver` may
    be handed in (a test, a script); otherwise each is built from its config section. A new mechanism is a hook
    passed in `hooks` and needs no edit here.

    cfg must be resolved (no `auto` precision left; RunContext does it once per run). `model` is the whole
    network (trainable.model); with features=True the loaders yield cached backbone features and only its
    head trains. run_dir None writes nothing (a cross-validation fold). Without a "val" loader every epoch counts
    as the best so far, so best.pt is the last epoch (a refit on all of train).
    """

    def __init__(self, cfg: Config, model: nn.Module, pre: Preprocessing, loaders: dict, run_dir: Path | None,
                 classes: list[str], *, device: torch.device, tracker: Tracker | None = None,
                 features: bool = False, dist: Distributed | None = None, hooks: Sequence[Hook] = (),
                 trainable: Trainable | None = None, step: TrainStep | None = None,
                 saver: CheckpointSaver | None = None):
        if cfg.train.precision == "auto" or cfg.train.channels_last is None:
            raise ConfigError("Trainer needs a resolved config (train.precision and train.channels_last set); "
                              "engine.context.resolve_config does that")
        self.cfg, self.pre, self.loaders, self.device = cfg, pre, loaders, device
        self.run_dir, self.classes = run_dir, classes
        self.dist = dist or Distributed()
        self.tracker = tracker or Tracker()
        self._stop: tuple[str, bool] | None = None  # (reason, now): request_stop's, the first asked
        self.stop_flag = StopFlag()  # fit() sets the one in force
        self.trainable = trainable or Trainable(model, cfg.model, device, features=features, dist=self.dist,
                                                channels_last=cfg.train.channels_last, compile=cfg.train.compile)
        self.model = self.trainable.model
        self.batch_pre = None if features else pre  # cached features are used as they are
        self.steps_per_epoch = batches_per_epoch(loaders["train"], cfg.train.limit_batches)
        self.budget = Budget(parse_duration(cfg.train.time_budget)) if cfg.train.time_budget else None
        self._val_images = batches_per_epoch(loaders["val"], cfg.train.limit_batches) * loaders["val"].batch_size \
            if "val" in loaders else 0
        # --ema: the step's averaged weights are what is validated, chosen as best, saved in best.pt, exported
        # and served; training updates `model`.
        weights = class_weights(cfg.train.class_weights, dataset_labels(loaders["train"].dataset), len(classes)) \
            if cfg.train.class_weights != "none" and step is None else None
        self.step = step or TrainStep.from_config(cfg, self.model, len(classes), device, self.batch_pre,
                                                  math.ceil(self.steps_per_epoch / cfg.train.accumulate),
                                                  self.budget, weights)
        self.saver = saver or CheckpointSaver(run_dir, self.dist.is_main, cfg, classes, pre)
        self.monitor = Monitor(cfg.train.monitor)
        self.state = TrainState()
        self.hooks = [*standard_hooks(cfg, self.monitor, self.budget, self._val_images, len(classes), self.tracker,
                                      run_dir),
                      *hooks, *recording_hooks(self.saver, EpochLog(run_dir, self.dist.is_main, self.tracker))]
        self.generator = loaders["train"].generator

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and kept: the EMA's with --ema, else the model's."""
        return self.step.ema.module if self.step.ema is not None else self.model

    def runtime_twin(self, folder: Path) -> CheckedOnnx | None:
        """The evaluated weights' ONNX twin (exported into `folder`, checked on the first batch), where ONNX
        Runtime predicts faster than PyTorch here (engine/speed.py); None for cached features (the head
        alone: nothing to gain), under torchrun or --compile."""
        c = self.cfg
        if self.trainable.features or self.dist.enabled or c.train.compile or \
                predicting_runtime(c.model.arch, c.train.precision, self.device) != "onnxruntime":
            return None
        return CheckedOnnx(self.eval_model, folder / "evaluated.onnx", c.train.threads)

    def epochs_text(self) -> str:
        """How far training may go, for the log and the bar: "/10", or the budget's seconds."""
        if self.budget is None:
            return f"/{self.cfg.train.epochs}"
        return f" ({self.budget.used():.0f}/{self.budget.seconds:.0f} s)"

    def _call(self, event: str, *args) -> list:
        """Every hook's answer to `event`, in order."""
        return [getattr(hook, event)(self, *args) for hook in self.hooks]

    def resume(self, path: Path) -> None:
        saved = self.saver.restore(path, self.model, self.step)
        self.state = TrainState.from_saved(saved["state"])
        for hook in self.hooks:  # each hook's own state, by its key
            if hook.key in saved.get("hooks", {}):
                hook.load_state_dict(saved["hooks"][hook.key])
        log.info("resumed from %s after epoch %d", path, self.state.epoch)

    def hook_states(self) -> dict:
        """Every stateful hook's state_dict, by its key: what last.pt keeps beside the TrainState."""
        return {hook.key: state for hook in self.hooks if (state := hook.state_dict())}

    def hook_results(self) -> dict:
        """Every hook's part of results.json."""
        return {key: value for hook in self.hooks for key, value in hook.results(self).items()}

    # ------------------------------------------------------------------ loops
    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training loader. On CUDA no step waits for the GPU: the loss and the correct
        count add up on the device and are read, like the gradient norm, only where a hook or the log asks."""
        self.trainable.set_epoch(epoch)
        forward, totals, profile = self.trainable.forward(), EpochTotals(self.device), EpochProfile()
        self._call("on_train_epoch_start", epoch)
        try:
            for step, (images, targets) in enumerate(profile.batches(self.loaders["train"])):
                at = self._batch_at(epoch, step, totals, profile)
                # a hook may end the epoch between optimizer steps (the budget, a signal), every rank at the same
                # step: agreeing across processes is a collective, so under torchrun only at logged steps
                if at.group_start and (not self.dist.enabled or at.logged_group):
                    self._call("before_step", at)
                    if self.dist.any(self._stop is not None and self._stop[1]):
                        break
                self._call("on_batch_start", at)
                if at.group_start:
                    self.step.zero_grad()
                # a group's earlier batches keep their gradients local under DDP; its last averages them
                logits, at.loss, y = self.step.forward_backward(forward, images, targets, at.group_size,
                                                                self.trainable.no_sync(at.group_end))
                totals.add(at.loss, logits, y)
                at.lr = self.step.lr
                if at.group_end:
                    at.grad_norm = self.step.optimizer_step(
                        read_norm=at.logged or any(self._call("needs_grad_norm", at)))
                self._call("on_batch_end", at)
                if step + 1 >= self.steps_per_epoch:
                    break
        finally:
            self._call("on_train_epoch_end", epoch)
        loss, right, seen = self.dist.sum(totals.loss.item(), totals.correct.item(), totals.seen)  # all ranks' shards
        return {"train_loss": loss / max(seen, 1), "train_accuracy": right / max(seen, 1),
                **profile.finish(int(seen))}

    def _batch_at(self, epoch: int, step: int, totals: EpochTotals, profile: EpochProfile) -> BatchAt:
        """--accumulate N: one optimizer step per group of N batches (the last group may be shorter)."""
        accumulate, steps = self.cfg.train.accumulate, self.steps_per_epoch
        group_start, opt_step = step - step % accumulate, step // accumulate
        group_end = step + 1 == min(group_start + accumulate, steps)
        logged_group = opt_step % self.cfg.tracking.log_every_steps == 0
        return BatchAt(epoch=epoch, step=step, steps=steps, opt_step=opt_step, group_start=step == group_start,
                       group_end=group_end, group_size=min(accumulate, steps - group_start),
                       logged_group=logged_group, seen=totals.seen, profile=profile, totals=totals)

    def predict(self, loader, desc: str = "eval", runtime_net=None) -> tuple[np.ndarray, np.ndarray, float]:
        """Targets, class probabilities and mean loss over the whole split (each rank predicts its shard).
        runtime_net: the evaluated weights' CheckedOnnx twin (export/onnx.py), to predict on ONNX Runtime."""
        net = self.trainable.head_of(self.eval_model)
        self.dist.sync_buffers(net)  # BatchNorm statistics as rank 0 has (and saves) them
        channels_last = self.cfg.train.channels_last and runtime_net is None  # the runtime takes NCHW
        out = predict_loader(runtime_net or net, loader, self.batch_pre, self.device, self.cfg.train.precision,
                             channels_last, self.cfg.train.limit_batches, self.step.eval_criterion, desc,
                             self.cfg.train.tta)
        return gather_predictions(self.dist, loader, *out)

    def fit(self, until_epoch: int | None = None, stop: StopFlag | None = None) -> TrainState:
        """Train to cfg.train.epochs (or to the time budget), or stop after until_epoch with the schedule
        still set for all of them (a cross-validated refit stops where the folds did best; 0: no training,
        the model as initialised is the one kept). stop: the run's signal handling (signals.py), else this
        call's own."""
        # with a time budget the deadline ends training, not the epoch count
        last_epoch = until_epoch if until_epoch is not None else \
            (sys.maxsize if self.budget is not None else self.cfg.train.epochs)
        with nullcontext(stop) if stop is not None else StopFlag(immediate=not self.dist.enabled) as stop:
            self.stop_flag, self._stop = stop, None
            self._call("on_fit_start")
            for epoch in range(self.state.epoch, last_epoch):
                if self._should_stop():  # a resumed run whose budget is spent
                    break
                row = self.run_epoch(epoch)
                with stop.deferred():  # best.pt, last.pt and metrics.csv are written whole, or not at all
                    self._record(epoch, row)
                self._call("on_epoch_end", row)
                if self._should_stop():
                    break
            self.state.finished = True
            if until_epoch == 0:  # best.pt is the untrained model (epoch 0 won cross-validation)
                self.state.best_epoch = 0
            with stop.deferred():
                self._call("on_fit_end")
        return self.state

    def run_epoch(self, epoch: int) -> dict:
        """Train one epoch (reseeded from (seed, epoch), so a resumed epoch repeats exactly), then validate;
        returns the epoch's metrics row."""
        seed = self.cfg.seed * 1000 + epoch
        seed_everything(seed + 7919 * self.dist.rank)  # ranks augment differently
        if self.generator is not None:
            self.generator.manual_seed(seed)
        if hasattr(self.loaders["train"].sampler, "set_epoch"):  # DistributedSampler: a new shuffle
            self.loaders["train"].sampler.set_epoch(epoch)
        start = time.perf_counter()
        train = self.train_epoch(epoch)
        targets, probs, val_loss = np.zeros(0), np.zeros((0, 1)), math.nan
        if "val" in self.loaders:
            val_started = time.perf_counter()
            # on ONNX Runtime where it is the faster (a CPU): this epoch's weights exported, checked, predicting
            with tempfile.TemporaryDirectory(prefix="petlab-val-") as tmp:
                targets, probs, val_loss = self.predict(self.loaders["val"], "val", self.runtime_twin(Path(tmp)))
            self._call("on_validation_end",
                       Validation(epoch + 1, targets, probs, val_loss, time.perf_counter() - val_started))
        return {
            "epoch": epoch + 1,
            "train_loss": train.pop("train_loss"),
            "train_accuracy": train.pop("train_accuracy"),
            **validation_metrics(targets, probs, val_loss),  # every metric of monitor.METRICS, by name
            "lr": self.step.lr,
            "epoch_seconds": time.perf_counter() - start,
            **train,  # images_per_second is training throughput only, plus the epoch's profile
        }

    def request_stop(self, reason: str, now: bool = False) -> None:
        """The one way to stop training (early stopping, the time budget, a hook of a run's own): after the
        current epoch, or with now=True at the next optimizer step (between steps; under torchrun at the next
        one every rank checks). `reason` is results.json's stopped_by; the first request is the one kept."""
        if self._stop is None:
            self._stop = (reason, now)
        elif now and not self._stop[1]:
            self._stop = (self._stop[0], True)

    def _should_stop(self) -> bool:
        """Whether a stop was asked for; says why in the state."""
        self.state.stopped_by = self._stop[0] if self._stop is not None else None
        return self._stop is not None

    def _record(self, epoch: int, row: dict) -> None:
        """The epoch in the state (history, and best and best_epoch where train.monitor says it improved), then
        every hook's on_epoch_trained: the recording hooks, last, write best.pt, last.pt and metrics.csv."""
        s = self.state
        s.epoch = epoch + 1
        s.history.append(row)
        if self.monitor.improved(row, s.best if s.best_epoch > 0 else {}):  # train.monitor: what best.pt follows
            s.best, s.best_epoch = {m: row[m] for m in METRICS}, epoch + 1
        self._call("on_epoch_trained", row)


def standard_hooks(cfg: Config, monitor: Monitor, budget: Budget | None, val_images: int, num_classes: int,
                   tracker: Tracker, run_dir: Path | None) -> list[Hook]:
    """The mechanisms every run has, each from its own config section, in the order they are called. `monitor`
    is the Trainer's: early stopping waits on the metric that keeps best.pt."""
    hooks: list[Hook] = []
    if cfg.train.early_stopping_patience:
        hooks.append(EarlyStopping(cfg.train.early_stopping_patience, monitor))
    if budget is not None:
        hooks.append(BudgetHook(budget, val_images))
    if cfg.train.compile:
        hooks.append(CompileTimer())  # first at a batch's end: its clock stops before the others run
    hooks.append(DiagnosticsHook(cfg.diagnostics, num_classes, tracker))
    if cfg.diagnostics.profile and run_dir is not None:
        hooks.append(TorchTrace(run_dir / "profile", cfg.diagnostics.profile_steps))
    hooks += [EpochBar(), BatchLog(tracker)]
    return hooks


def recording_hooks(saver: CheckpointSaver, epoch_log: EpochLog) -> list[Hook]:
    """What records an epoch once every other hook has seen it (so what they add to the state is saved): best.pt
    and last.pt, metrics.csv and the log line, then the check for a Ctrl-C or SIGTERM that was only recorded."""
    return [Checkpointing(saver), epoch_log, SignalStop()]

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
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from petlab.config import Config
from petlab.data.transforms import Preprocessing
from petlab.engine.batches import batches_per_epoch, predict_loader, seed_everything
from petlab.engine.budget import Budget, parse_duration
from petlab.engine.checkpoint import CheckpointSaver
from petlab.engine.diagnostics import Diagnostics
from petlab.engine.distributed import Distributed, gather_predictions
from petlab.engine.epoch_log import EpochLog
from petlab.engine.hooks import EpochCallback, Hook
from petlab.engine.imbalance import class_weights, dataset_labels
from petlab.engine.outcome import Interrupted
from petlab.engine.profiling import EpochProfile, torch_trace
from petlab.engine.signals import StopFlag
from petlab.engine.speed import predicting_runtime
from petlab.engine.step import TrainStep
from petlab.engine.stopping import StopRules
from petlab.engine.trainable import Trainable
from petlab.errors import ConfigError
from petlab.export.onnx import CheckedOnnx
from petlab.monitor import Monitor
from petlab.progress import progress
from petlab.tracking import Tracker

log = logging.getLogger(__name__)

@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    best_val_accuracy: float = -1.0
    best_val_loss: float = math.inf
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    finished: bool = False  # all epochs done or stopped early: nothing left to resume
    history: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)  # diagnostics that fired
    initial: dict = field(default_factory=dict)  # {"val": {...}, "test": {...}} before any training (epoch 0)
    budget_used_s: float = 0.0  # training time spent, for --time-budget (kept across resumes)
    compile_seconds: float = 0.0  # --compile: time of the steps that compiled, left out of train_seconds
    stopped_by: str | None = None  # "time_budget" or "early_stopping" when either ended training


class Trainer:
    """Trains one model on its loaders: the epoch loop and validation, over small objects that each own one
    mechanism: what trains (trainable.py: the model or its head, freezing, DDP, compile), the training step
    (step.py: loss, optimizer, schedule, scaler, clipping, EMA), the checkpoint saver (checkpoint.py), the stop
    rules (stopping.py: early stopping, the time budget) and the epoch log (epoch_log.py: metrics.csv, the
    tracker, the log line).

    cfg must be resolved (no `auto` precision left; RunContext does it once per run). `model` is the whole
    network (trainable.model); with features=True the loaders yield cached backbone features and only its
    head trains. run_dir None writes nothing (a cross-validation fold). Without a "val" loader every epoch counts
    as the best so far, so best.pt is the last epoch (a refit on all of train).
    hooks (engine/hooks.py) are called at the loop's events, in order: a new mechanism needs no edit here.
    on_epoch(row) runs after each epoch is recorded (a hook of its own); raising StopRun ends the run on purpose.
    on_validated(epoch, targets, probabilities) runs after each validation pass (cross-validation keeps them).
    """

    def __init__(self, cfg: Config, model: nn.Module, pre: Preprocessing, loaders: dict, run_dir: Path | None,
                 classes: list[str], *, device: torch.device, tracker: Tracker | None = None,
                 features: bool = False, dist: Distributed | None = None,
                 on_epoch: Callable[[dict], None] | None = None,
                 on_validated: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
                 hooks: Sequence[Hook] = ()):
        if cfg.train.precision == "auto" or cfg.train.channels_last is None:
            raise ConfigError("Trainer needs a resolved config (train.precision and train.channels_last set); "
                              "engine.context.resolve_config does that")
        self.cfg, self.pre, self.loaders, self.device = cfg, pre, loaders, device
        self.run_dir, self.classes = run_dir, classes
        self.dist = dist or Distributed()
        self.tracker = tracker or Tracker()
        self.on_validated = on_validated
        self.hooks = [*hooks, *([EpochCallback(on_epoch)] if on_epoch else [])]
        self._stop_requested: str | None = None
        self.trainable = Trainable(cfg, model, device, features, self.dist)
        self.model = self.trainable.model
        self.batch_pre = None if features else pre  # cached features are used as they are
        self.steps_per_epoch = batches_per_epoch(loaders["train"], cfg.train.limit_batches)
        self.budget = Budget(parse_duration(cfg.train.time_budget)) if cfg.train.time_budget else None
        self._val_images = batches_per_epoch(loaders["val"], cfg.train.limit_batches) * loaders["val"].batch_size \
            if "val" in loaders else 0
        # --ema: the step's averaged weights are what is validated, chosen as best, saved in best.pt, exported
        # and served; training updates `model`.
        self.step = TrainStep(cfg, self.model, len(classes), device, self.batch_pre,
                              math.ceil(self.steps_per_epoch / cfg.train.accumulate), self.budget,
                              class_weights(cfg, dataset_labels(loaders["train"].dataset), len(classes))
                              if cfg.train.class_weights != "none" else None)
        self.saver = CheckpointSaver(run_dir, self.dist.is_main, cfg, classes, pre)
        self.monitor = Monitor(cfg.train.monitor)
        self.stop_rules = StopRules(cfg.train.early_stopping_patience, self.budget, self.monitor)
        self.epoch_log = EpochLog(run_dir, self.dist.is_main, self.tracker, self.steps_per_epoch)
        self.state = TrainState()
        self.diagnostics = self._diagnostics()
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

    def _of_epochs(self) -> str:
        if self.budget is None:
            return f"/{self.cfg.train.epochs}"
        return f" ({self.budget.used():.0f}/{self.budget.seconds:.0f} s)"

    def _diagnostics(self) -> Diagnostics:
        def emit(event):
            self.tracker.log_event(event["rule"], event["message"], {"epoch": event["epoch"]})
        return Diagnostics(self.cfg.diagnostics, len(self.classes), self.state.events, emit)

    def checkpoint(self, name: str, resumable: bool = True) -> None:
        """last.pt: the training weights and all that resuming needs; best.pt: the evaluated weights only."""
        self.saver.save(name, self.model if resumable else self.eval_model, self.state.__dict__,
                        self.step if resumable else None)

    def resume(self, path: Path) -> None:
        self.state = TrainState(**self.saver.restore(path, self.model, self.step))
        if self.budget is not None:
            self.budget.used_before = self.state.budget_used_s  # only what is left of the budget
        self.diagnostics = self._diagnostics()
        log.info("resumed from %s after epoch %d", path, self.state.epoch)

    # ------------------------------------------------------------------ loops
    def train_epoch(self, epoch: int, stop: StopFlag, profile_steps: int = 0) -> dict:
        """One pass over the training loader. On CUDA no step waits for the GPU: the loss and the correct
        count add up on the device and are read, like the gradient norm, only at the log interval (and
        the norm also when diagnostics check it)."""
        self.trainable.set_epoch(epoch)
        steps, every = self.steps_per_epoch, self.cfg.tracking.log_every_steps
        check_every = self.cfg.diagnostics.check_every_steps if self.cfg.diagnostics.enabled else None
        accumulate = self.cfg.train.accumulate
        forward, compiling = self.trainable.forward(), self.trainable.compiles_next_step()
        total_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        profile = EpochProfile()
        bar = progress(total=steps, desc=f"epoch {epoch + 1}{self._of_epochs()}", unit="batch", leave=False)
        with torch_trace(self.run_dir and self.run_dir / "profile", profile_steps, profile_steps > 0) as trace_step:
            for step, (images, targets) in enumerate(profile.batches(self.loaders["train"])):
                # --accumulate N: one optimizer step per group of N batches (the last group may be shorter);
                # logging and checks count optimizer steps
                group_start, opt_step = step - step % accumulate, step // accumulate
                group_end = step + 1 == min(group_start + accumulate, steps)
                logged = group_end and opt_step % every == 0
                if self.budget is not None:  # where this epoch's steps will end, at this epoch's rate so far
                    self.budget.expect_epoch_end((steps - step) * profile.elapsed() / step if step else None)
                # Stop (Ctrl-C, or the time budget spent) between groups, every rank at the same step: across
                # processes agreeing is a collective, so only where an optimizer step is also logged.
                if step == group_start and (not self.dist.enabled or opt_step % every == 0):
                    if self.budget is not None:
                        if seen:
                            self.budget.estimate_reserve(profile.elapsed() / seen, self._val_images)
                        if self.dist.any(self.budget.spent()):
                            break
                    if self.dist.any(stop.requested):
                        raise Interrupted
                first_batch = epoch == 0 and step == 0
                if first_batch:
                    self.diagnostics.watch_activations(self.model)
                step_started = time.perf_counter() if compiling and step == 0 else None
                if step == group_start:
                    self.step.zero_grad()
                # a group's earlier batches keep their gradients local under DDP; its last averages them
                no_sync = self.trainable.no_sync(group_end)
                logits, loss, y = self.step.forward_backward(forward, images, targets,
                                                             min(accumulate, steps - group_start), no_sync)
                total_loss += loss.detach() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
                if first_batch:
                    self.diagnostics.check_first_batch(loss.item())
                grad_norm, checked, lr = None, False, self.step.lr
                if group_end:
                    checked = check_every is not None and opt_step % check_every == 0
                    grad_norm = self.step.optimizer_step(read_norm=logged or checked)
                if step_started is not None:  # compilation happens in the first forward and backward
                    loss.item()  # wait for the step, to time it
                    self.state.compile_seconds += time.perf_counter() - step_started
                    profile.exclude(time.perf_counter() - step_started)
                if grad_norm is not None:
                    self.diagnostics.check_gradients(self.model, grad_norm, epoch + 1, opt_step, layers=checked)
                if logged:
                    self.tracker.log_metrics({"batch_loss": loss.item(), "lr": lr, "grad_norm": grad_norm},
                                             step=epoch * steps + step, epoch=epoch + 1)
                    bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}")
                    if self.budget is not None:  # the time used, in the bar
                        bar.set_description(f"epoch {epoch + 1}{self._of_epochs()}", refresh=False)
                trace_step()
                bar.update()
                if step + 1 >= steps:
                    break
        bar.close()
        total, right, seen = self.dist.sum(total_loss.item(), correct.item(), seen)  # over all ranks' shards
        return {"train_loss": total / max(seen, 1), "train_accuracy": right / max(seen, 1),
                **profile.finish(int(seen))}

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
        cfg = self.cfg
        profile_steps = cfg.diagnostics.profile_steps if cfg.diagnostics.profile and self.run_dir else 0
        if self.budget is not None:
            self.budget.start()
        # with a time budget the deadline ends training, not the epoch count
        last_epoch = until_epoch if until_epoch is not None else \
            (sys.maxsize if self.budget is not None else cfg.train.epochs)
        with nullcontext(stop) if stop is not None else StopFlag(immediate=not self.dist.enabled) as stop:
            for hook in self.hooks:
                hook.on_fit_start(self)
            for epoch in range(self.state.epoch, last_epoch):
                if self.budget is not None and self.budget.spent():
                    break
                row = self.run_epoch(epoch, stop, profile_steps)
                profile_steps = 0  # one trace per process is plenty
                with stop.deferred():  # best.pt, last.pt and metrics.csv are written whole, or not at all
                    self._record(epoch, row)
                for hook in self.hooks:
                    hook.on_epoch_end(self, row)
                if stop.requested:
                    raise Interrupted
                if self._should_stop():
                    break
            self.state.finished = True
            with stop.deferred():
                if until_epoch == 0:  # best.pt is the untrained model (epoch 0 won cross-validation)
                    self.state.best_epoch = 0
                    self.checkpoint("best.pt", resumable=False)
                self.checkpoint("last.pt")
        return self.state

    def run_epoch(self, epoch: int, stop: StopFlag, profile_steps: int = 0) -> dict:
        """Train one epoch (reseeded from (seed, epoch), so a resumed epoch repeats exactly), then validate;
        returns the epoch's metrics row."""
        seed = self.cfg.seed * 1000 + epoch
        seed_everything(seed + 7919 * self.dist.rank)  # ranks augment differently
        if self.generator is not None:
            self.generator.manual_seed(seed)
        if hasattr(self.loaders["train"].sampler, "set_epoch"):  # DistributedSampler: a new shuffle
            self.loaders["train"].sampler.set_epoch(epoch)
        start = time.perf_counter()
        train = self.train_epoch(epoch, stop, profile_steps)
        targets, probs, val_loss = np.zeros(0), np.zeros((0, 1)), math.nan
        if "val" in self.loaders:
            val_started = time.perf_counter()
            # on ONNX Runtime where it is the faster (a CPU): this epoch's weights exported, checked, predicting
            with tempfile.TemporaryDirectory(prefix="petlab-val-") as tmp:
                targets, probs, val_loss = self.predict(self.loaders["val"], "val", self.runtime_twin(Path(tmp)))
            if self.on_validated:
                self.on_validated(epoch + 1, targets, probs)
            if self.budget is not None:  # the last validation must fit in the budget too
                self.budget.measured_reserve(time.perf_counter() - val_started)
        return {
            "epoch": epoch + 1,
            "train_loss": train.pop("train_loss"),
            "train_accuracy": train.pop("train_accuracy"),
            "val_loss": val_loss,
            "val_accuracy": float((targets == probs.argmax(1)).mean()) if len(targets) else math.nan,
            "lr": self.step.lr,
            "epoch_seconds": time.perf_counter() - start,
            **train,  # images_per_second is training throughput only, plus the epoch's profile
        }

    def request_stop(self, reason: str) -> None:
        """End training after the current epoch (a hook's way to stop it); `reason` is results.json's stopped_by."""
        self._stop_requested = reason

    def _should_stop(self) -> bool:
        """A hook's request, early stopping, or the time budget spent; says which in the state."""
        self.state.stopped_by = self._stop_requested or \
            self.stop_rules.reason(self.state.epochs_without_improvement, self.state.epoch)
        return self.state.stopped_by is not None

    def _record(self, epoch: int, row: dict) -> None:
        s = self.state
        best = {"val_accuracy": s.best_val_accuracy, "val_loss": s.best_val_loss} if s.best_epoch > 0 else {}
        improved = self.monitor.improved(row, best)  # train.monitor: what best.pt and early stopping follow
        s.epoch = epoch + 1
        s.history.append(row)
        if self.budget is not None:
            s.budget_used_s = self.budget.used()
        self.diagnostics.check_epoch(s.history)
        if improved:
            s.best_val_accuracy, s.best_val_loss, s.best_epoch = row["val_accuracy"], row["val_loss"], epoch + 1
            s.epochs_without_improvement = 0
            self.checkpoint("best.pt", resumable=False)
        else:
            s.epochs_without_improvement += 1
        self.checkpoint("last.pt")
        self.epoch_log.write(row, s.history, s.initial, improved, self._of_epochs())

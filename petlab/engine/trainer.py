"""The training loop: epochs, early stopping, checkpoints, and clean interruption.

Every epoch reseeds all RNGs from (seed, epoch), and `last.pt` is written at the end of each
epoch. An interrupted epoch is therefore simply run again on resume, and a resumed run ends
with exactly the weights an uninterrupted one would have.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from petlab.config import Config
from petlab.data.transforms import Preprocessing
from petlab.engine.batches import autocast, batches_per_epoch, predict_loader, prepare_batch, seed_everything
from petlab.engine.budget import WARMUP_START, Budget, lr_factor, parse_duration
from petlab.engine.checkpoint import atomic_save, check_resumable, load_checkpoint, rng_state, set_rng_state
from petlab.engine.diagnostics import Diagnostics, gradient_norm
from petlab.engine.distributed import Distributed, gather_predictions
from petlab.engine.outcome import Interrupted
from petlab.engine.profiling import EpochProfile, torch_trace
from petlab.engine.signals import StopFlag
from petlab.engine.speed import predicting_runtime
from petlab.errors import ConfigError
from petlab.export.onnx import CheckedOnnx
from petlab.fileio import atomic_write
from petlab.models import ARCHS, head_parameters
from petlab.progress import progress
from petlab.tracking import Tracker

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                  "epoch_seconds", "images_per_second", "train_seconds", "data_seconds", "compute_seconds",
                  "data_wait_fraction", "cpu_utilisation", "peak_rss_mb"]


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


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    head_ids = head_parameters(model, cfg.model.arch)
    head = [p for p in model.parameters() if id(p) in head_ids]
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    pretrained = cfg.model.pretrained or cfg.model.weights
    backbone_lr = cfg.train.lr * (cfg.model.backbone_lr_scale if pretrained else 1.0)
    groups = [{"params": head, "lr": cfg.train.lr, "name": "head"},
              {"params": backbone, "lr": backbone_lr, "name": "backbone"}]
    t = cfg.train
    # One fused kernel per step instead of a dozen foreach passes over the weights (CPU and CUDA).
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=True,
                               fused=fused)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=t.lr, weight_decay=t.weight_decay, fused=fused)


def warmup_share(cfg: Config) -> float:
    """The share of the run spent warming up: warmup_epochs / epochs; onecycle's default is 0.3."""
    t = cfg.train
    if t.warmup_epochs:
        return min(max(t.warmup_epochs / t.epochs, 0.01), 0.99)
    return 0.3 if t.scheduler == "onecycle" else 0.0


def build_scheduler(cfg: Config, optimizer, optimizer_steps_per_epoch: int, budget: Budget | None = None):
    """Per-optimizer-step schedules over train.epochs, with a linear warm-up when warmup_epochs is set (any
    schedule); with a time budget, over the budget's time instead (engine/budget.py)."""
    kind, warmup = cfg.train.scheduler, warmup_share(cfg)
    if budget is not None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: lr_factor(kind, budget.progress(), warmup))
    total = max(1, cfg.train.epochs * optimizer_steps_per_epoch)
    if kind == "onecycle":  # its warm-up is built in
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total, pct_start=warmup)
    warmup_steps = round(warmup * total)
    main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup_steps) \
        if kind == "cosine" else None
    if not warmup_steps:
        return main
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, WARMUP_START, 1.0, total_iters=warmup_steps)
    return ramp if main is None else torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], [warmup_steps])


def batch_mixer(cfg: Config, num_classes: int):
    """MixUp and/or CutMix over a training batch (torchvision.transforms.v2): (images, labels) -> (mixed images,
    soft targets whose rows sum to 1); None when both are off. With both, each batch gets one of them."""
    from torchvision.transforms import v2

    mixers = ([v2.MixUp(alpha=cfg.data.mixup, num_classes=num_classes)] if cfg.data.mixup else []) + \
        ([v2.CutMix(alpha=cfg.data.cutmix, num_classes=num_classes)] if cfg.data.cutmix else [])
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


class Trainer:
    """Trains one model on its loaders: epochs, validation, checkpoints, the per-step log.

    cfg must be resolved (no `auto` precision left; RunContext does it once per run). The modules:
      model  the whole network; what checkpoints hold and what is evaluated and exported
      net    what a batch goes through: `model`, or only its head when the loaders yield cached
             backbone features (features=True, see features.py)
      ddp    `net` in DistributedDataParallel under torchrun (None in one process); rebuilt when
             unfreezing changes which parameters train
    run_dir None writes nothing (a cross-validation fold). Without a "val" loader every epoch counts
    as the best so far, so best.pt is the last epoch (a refit on all of train).
    on_epoch(row) runs after each epoch is recorded; raising StopRun ends the run on purpose.
    """

    def __init__(self, cfg: Config, model: nn.Module, pre: Preprocessing, loaders: dict, run_dir: Path | None,
                 classes: list[str], *, device: torch.device, tracker: Tracker | None = None,
                 features: bool = False, dist: Distributed | None = None,
                 on_epoch: Callable[[dict], None] | None = None):
        if cfg.train.precision == "auto" or cfg.train.channels_last is None:
            raise ConfigError("Trainer needs a resolved config (train.precision and train.channels_last set); "
                              "engine.context.resolve_config does that")
        self.cfg, self.pre, self.loaders, self.device = cfg, pre, loaders, device
        self.run_dir, self.classes = run_dir, classes
        self.dist = dist or Distributed()
        self.tracker = tracker or Tracker()
        self.on_epoch = on_epoch
        self.model = model.to(device)
        if cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.features = features
        self.net = model.get_submodule(ARCHS[cfg.model.arch].head) if features else model
        # --ema: the averaged weights (buffers too, so BatchNorm statistics match them) are what is
        # validated, chosen as best, saved in best.pt, exported and served; training updates `model`.
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema), use_buffers=True) \
            if cfg.train.ema else None
        self.batch_pre = None if features else pre  # cached features are used as they are
        self.ddp = None
        self._ddp_frozen = None  # the frozen/unfrozen state self.ddp was built for
        self.compiled = None  # --compile: torch.compile(ddp or net), rebuilt when unfreezing
        self._compiled_frozen = self._fresh_compile = None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)  # also takes soft targets
        self.mix = batch_mixer(cfg, len(classes))
        # fp16's narrow range needs the loss scaled up before backward (bf16 and fp32 do not)
        self.scaler = torch.amp.GradScaler(device.type) if cfg.train.precision == "fp16" else None
        self.optimizer = build_optimizer(cfg, model)
        self.steps_per_epoch = batches_per_epoch(loaders["train"], cfg.train.limit_batches)
        self.budget = Budget(parse_duration(cfg.train.time_budget)) if cfg.train.time_budget else None
        self._val_images = batches_per_epoch(loaders["val"], cfg.train.limit_batches) * loaders["val"].batch_size \
            if "val" in loaders else 0
        self.scheduler = build_scheduler(cfg, self.optimizer, math.ceil(self.steps_per_epoch / cfg.train.accumulate),
                                         self.budget)
        self.state = TrainState()
        self.diagnostics = self._diagnostics()
        self.generator = loaders["train"].generator
        self._head_ids = head_parameters(model, cfg.model.arch)
        self.last_val: tuple[np.ndarray, np.ndarray] | None = None  # (targets, probabilities) of the last epoch
        if run_dir is not None:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and kept: the EMA's with --ema, else the model's."""
        return self.ema.module if self.ema is not None else self.model

    def _eval_net(self) -> nn.Module:
        m = self.eval_model
        return m.get_submodule(ARCHS[self.cfg.model.arch].head) if self.features else m

    def runtime_twin(self, folder: Path) -> CheckedOnnx | None:
        """The evaluated weights' ONNX twin (exported into `folder`, checked on the first batch), where ONNX
        Runtime predicts faster than PyTorch here (engine/speed.py); None for cached features (the head
        alone: nothing to gain), under torchrun or --compile."""
        c = self.cfg
        if self.features or self.dist.enabled or c.train.compile or \
                predicting_runtime(c.model.arch, c.train.precision, self.device) != "onnxruntime":
            return None
        return CheckedOnnx(self.eval_model, folder / "evaluated.onnx", c.train.threads)

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        return autocast(self.device, self.cfg.train.precision)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return prepare_batch(images, self.batch_pre, self.device, self.cfg.train.channels_last)

    def backbone_frozen(self, epoch: int) -> bool:
        m = self.cfg.model
        return m.freeze_backbone and (m.unfreeze_at is None or epoch < m.unfreeze_at)

    def set_trainable(self, epoch: int) -> None:
        """Which weights train in this epoch (frozen backbone, BatchNorm statistics), and the DDP / compiled
        wrappers that go with that."""
        frozen = self.backbone_frozen(epoch)
        for p in self.model.parameters():
            p.requires_grad_(id(p) in self._head_ids or not frozen)
        self.model.train()
        if frozen or self.cfg.model.freeze_batchnorm:  # a frozen backbone keeps its BatchNorm statistics too
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if self.dist.enabled and self._ddp_frozen != frozen:
            # DDP registers the parameters that require grad when it is built, so unfreezing rebuilds it.
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.net, device_ids=[self.device] if self.device.type == "cuda"
                                               else None)
            self._ddp_frozen = frozen
            self.compiled = None
        if self.cfg.train.compile and (self.compiled is None or self._compiled_frozen != frozen):
            # a new set of trainable weights compiles again; its first step is timed as compile time
            self.compiled = torch.compile(self.ddp if self.ddp is not None else self.net)
            self._compiled_frozen, self._fresh_compile = frozen, True

    def train_forward(self) -> nn.Module:
        """What a training batch goes through: compiled, or in DDP, or the plain net (model or head)."""
        # `is not None`, not `or`: a compiled module answers bool() with len(), which most models lack
        return next(m for m in (self.compiled, self.ddp, self.net) if m is not None)

    def _of_epochs(self) -> str:
        if self.budget is None:
            return f"/{self.cfg.train.epochs}"
        return f" ({self.budget.used():.0f}/{self.budget.seconds:.0f} s)"

    def _diagnostics(self) -> Diagnostics:
        def emit(event):
            self.tracker.log_event(event["rule"], event["message"], {"epoch": event["epoch"]})
        return Diagnostics(self.cfg.diagnostics, len(self.classes), self.state.events, emit)

    def checkpoint(self, name: str, resumable: bool = True) -> None:
        """last.pt can resume training; best.pt holds only what evaluation and export need (a third the size)."""
        if not self.dist.is_main or self.run_dir is None:
            return  # every rank holds the same weights; rank 0 writes them
        ckpt = {
            # best.pt: the weights evaluation and export use; last.pt: the ones training continues from
            "model": (self.model if resumable else self.eval_model).state_dict(),
            "state": self.state.__dict__,
            "config": self.cfg.to_dict(),
            "classes": self.classes,
            "preprocessing": self.pre.to_dict(),
            "arch": self.cfg.model.arch,
        }
        if resumable:
            ckpt.update(optimizer=self.optimizer.state_dict(), rng=rng_state(),
                        scheduler=self.scheduler.state_dict() if self.scheduler else None,
                        scaler=self.scaler.state_dict() if self.scaler else None,
                        ema=self.ema.state_dict() if self.ema is not None else None)
        atomic_save(ckpt, self.run_dir / "checkpoints" / name)

    def resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        check_resumable(ckpt, path, self.classes, self.cfg.to_dict())
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        if self.scheduler and ckpt["scheduler"]:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.state = TrainState(**ckpt["state"])
        if self.budget is not None:
            self.budget.used_before = self.state.budget_used_s  # only what is left of the budget
        self.diagnostics = self._diagnostics()
        set_rng_state(ckpt["rng"])
        log.info("resumed from %s after epoch %d", path, self.state.epoch)

    # ------------------------------------------------------------------ loops
    def train_epoch(self, epoch: int, stop: StopFlag, profile_steps: int = 0) -> dict:
        """One pass over the training loader. On CUDA no step waits for the GPU: the loss and the correct
        count add up on the device and are read, like the gradient norm, only at the log interval (and
        the norm also when diagnostics check it)."""
        self.set_trainable(epoch)
        steps, every = self.steps_per_epoch, self.cfg.tracking.log_every_steps
        check_every = self.cfg.diagnostics.check_every_steps if self.cfg.diagnostics.enabled else None
        accumulate = self.cfg.train.accumulate
        forward = self.train_forward()
        compiling, self._fresh_compile = bool(self._fresh_compile), False
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
                    self.optimizer.zero_grad(set_to_none=True)
                logits, loss, y = self.forward_backward(forward, images, targets, min(accumulate, steps - group_start),
                                                         sync=group_end)
                total_loss += loss.detach() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
                if first_batch:
                    self.diagnostics.check_first_batch(loss.item())
                grad_norm, checked, lr = None, False, self.optimizer.param_groups[0]["lr"]
                if group_end:
                    checked = check_every is not None and opt_step % check_every == 0
                    grad_norm = self.optimizer_step(read_norm=logged or checked)
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

    def forward_backward(self, forward: nn.Module, images: torch.Tensor, targets: torch.Tensor, group: int,
                          sync: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch: inputs (mixed with --mixup/--cutmix) through the network, the loss scaled to the mean over
        its accumulation group (and by the fp16 scaler), backward. sync False: DDP keeps this batch's gradients
        local (the group's last batch averages them over the processes). Returns the logits, the unscaled loss
        and the labels accuracy counts (the dominant one of mixed targets)."""
        x, y = self._prepare(images), targets.to(self.device, non_blocking=True)
        target = y
        if self.mix is not None:
            x, target = self.mix(x, y)
            y = target.argmax(1)
            if self.cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        with nullcontext() if sync or self.ddp is None else self.ddp.no_sync():
            with self._autocast():
                logits = forward(x)
            loss = self.criterion(logits.float(), target)
            scaled = loss / group if group > 1 else loss  # the group's mean, as one big batch has
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return logits, loss, y

    def optimizer_step(self, read_norm: bool) -> float | None:
        """Unscale (fp16), clip, step, schedule, average (--ema). Returns the gradient norm before clipping when
        read_norm -- reading it waits for the device, so only at log and check steps -- else None."""
        if self.scaler:  # true gradients for clipping and the norm
            self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if self.cfg.train.clip_grad:  # the norm before clipping: what diagnostics and the log should see
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad)
            grad_norm = float(norm) if read_norm else None
        elif read_norm:
            grad_norm = gradient_norm(self.model)
        if self.scaler:  # skips the step when fp16 overflowed, and adapts the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if grad_norm is not None and not math.isfinite(grad_norm):
                grad_norm = None  # an overflow the scaler handled, not an exploding gradient
        else:
            self.optimizer.step()
        if self.scheduler:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return grad_norm

    def predict(self, loader, desc: str = "eval", runtime_net=None) -> tuple[np.ndarray, np.ndarray, float]:
        """Targets, class probabilities and mean loss over the whole split (each rank predicts its shard).
        runtime_net: the evaluated weights' CheckedOnnx twin (export/onnx.py), to predict on ONNX Runtime."""
        net = self._eval_net()
        self.dist.sync_buffers(net)  # BatchNorm statistics as rank 0 has (and saves) them
        channels_last = self.cfg.train.channels_last and runtime_net is None  # the runtime takes NCHW
        out = predict_loader(runtime_net or net, loader, self.batch_pre, self.device, self.cfg.train.precision,
                             channels_last, self.cfg.train.limit_batches, self.criterion, desc, self.cfg.train.tta)
        return gather_predictions(self.dist, loader, *out)

    def fit(self, until_epoch: int | None = None, stop: StopFlag | None = None) -> TrainState:
        """Train to cfg.train.epochs (or to the time budget), or stop after until_epoch with the schedule
        still set for all of them (a cross-validated refit stops where the folds did best). stop: the run's
        signal handling (signals.py), else this call's own."""
        cfg = self.cfg
        profile_steps = cfg.diagnostics.profile_steps if cfg.diagnostics.profile and self.run_dir else 0
        if self.budget is not None:
            self.budget.start()
        # with a time budget the deadline ends training, not the epoch count
        last_epoch = until_epoch or (sys.maxsize if self.budget is not None else cfg.train.epochs)
        with nullcontext(stop) if stop is not None else StopFlag(immediate=not self.dist.enabled) as stop:
            for epoch in range(self.state.epoch, last_epoch):
                if self.budget is not None and self.budget.spent():
                    break
                row = self.run_epoch(epoch, stop, profile_steps)
                profile_steps = 0  # one trace per process is plenty
                with stop.deferred():  # best.pt, last.pt and metrics.csv are written whole, or not at all
                    self._record(epoch, row)
                if self.on_epoch:
                    self.on_epoch(row)
                if stop.requested:
                    raise Interrupted
                if self._should_stop():
                    break
            self.state.finished = True
            with stop.deferred():
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
            self.last_val = (targets, probs)
            if self.budget is not None:  # the last validation must fit in the budget too
                self.budget.measured_reserve(time.perf_counter() - val_started)
        return {
            "epoch": epoch + 1,
            "train_loss": train.pop("train_loss"),
            "train_accuracy": train.pop("train_accuracy"),
            "val_loss": val_loss,
            "val_accuracy": float((targets == probs.argmax(1)).mean()) if len(targets) else math.nan,
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - start,
            **train,  # images_per_second is training throughput only, plus the epoch's profile
        }

    def _should_stop(self) -> bool:
        """Early stopping, or the time budget spent; says which in the state."""
        patience = self.cfg.train.early_stopping_patience
        if patience and self.state.epochs_without_improvement >= patience:
            log.info("early stopping: val accuracy has not improved for %d epochs", patience)
            self.state.stopped_by = "early_stopping"
        elif self.budget is not None and self.budget.spent():
            log.info("time budget reached: %.1f s of %.0f s used, %d epochs", self.budget.used(),
                     self.budget.seconds, self.state.epoch)
            self.state.stopped_by = "time_budget"
        return self.state.stopped_by is not None

    def _record(self, epoch: int, row: dict) -> None:
        s = self.state
        improved = math.isnan(row["val_accuracy"]) or row["val_accuracy"] > s.best_val_accuracy or (
            row["val_accuracy"] == s.best_val_accuracy and row["val_loss"] < s.best_val_loss)
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
        if self.dist.is_main and self.run_dir is not None:
            write_metrics_csv(self.run_dir / "metrics.csv", s.history, s.initial)
        self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"},
                                 step=(epoch + 1) * self.steps_per_epoch, epoch=epoch + 1)
        val = "no val (refit on all of train)" if math.isnan(row["val_accuracy"]) else (
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}{' *best*' if improved else ''}")
        log.info("epoch %d%s  train loss %.4f acc %.3f | %s | lr %.2e | %.1fs, %.1f img/s", row["epoch"],
                 self._of_epochs(), row["train_loss"], row["train_accuracy"], val, row["lr"],
                 row["epoch_seconds"], row["images_per_second"])


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

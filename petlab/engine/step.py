"""The training step, one mechanism: a batch through the network and back, then the optimizer step.

It owns the loss, MixUp/CutMix, the fp16 GradScaler, the optimizer and its schedule, gradient clipping
and the EMA of the weights. Trainer drives it through an epoch; lr_finder drives it directly.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from petlab.config import Config, DataConfig, ModelConfig, TrainConfig
from petlab.data.transforms import Preprocessing
from petlab.engine.batches import autocast, prepare_batch
from petlab.engine.budget import WARMUP_START, Budget, lr_factor
from petlab.engine.diagnostics import gradient_norm
from petlab.models import head_parameters


def build_optimizer(t: TrainConfig, m: ModelConfig, model: nn.Module) -> torch.optim.Optimizer:
    """train's optimizer over two groups: the head at train.lr, the backbone at model.backbone_lr_scale of it
    when it starts from trained weights."""
    head_ids = head_parameters(model, m.arch)
    head = [p for p in model.parameters() if id(p) in head_ids]
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    backbone_lr = t.lr * (m.backbone_lr_scale if m.pretrained or m.weights else 1.0)
    groups = [{"params": head, "lr": t.lr, "name": "head"},
              {"params": backbone, "lr": backbone_lr, "name": "backbone"}]
    # One fused kernel per step instead of a dozen foreach passes over the weights (CPU and CUDA).
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=True,
                               fused=fused)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=t.lr, weight_decay=t.weight_decay, fused=fused)


def warmup_share(t: TrainConfig) -> float:
    """The share of the run spent warming up: warmup_epochs / epochs; onecycle's default is 0.3."""
    if t.warmup_epochs:
        return min(max(t.warmup_epochs / t.epochs, 0.01), 0.99)
    return 0.3 if t.scheduler == "onecycle" else 0.0


def build_scheduler(t: TrainConfig, optimizer, optimizer_steps_per_epoch: int, budget: Budget | None = None):
    """Per-optimizer-step schedules over train.epochs, with a linear warm-up when warmup_epochs is set (any
    schedule); with a time budget, over the budget's time instead (engine/budget.py)."""
    kind, warmup = t.scheduler, warmup_share(t)
    if budget is not None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: lr_factor(kind, budget.progress(), warmup))
    total = max(1, t.epochs * optimizer_steps_per_epoch)
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


def batch_mixer(d: DataConfig, num_classes: int):
    """MixUp and/or CutMix over a training batch (torchvision.transforms.v2): (images, labels) -> (mixed images,
    soft targets whose rows sum to 1); None when both are off. With both, each batch gets one of them."""
    from torchvision.transforms import v2

    mixers = ([v2.MixUp(alpha=d.mixup, num_classes=num_classes)] if d.mixup else []) + \
        ([v2.CutMix(alpha=d.cutmix, num_classes=num_classes)] if d.cutmix else [])
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


class TrainStep:
    """forward_backward() once per batch, optimizer_step() once per accumulation group.

    It is handed its parts: the optimizer and its schedule, the loss, the batch mixer, the fp16 scaler and the
    EMA; `from_config` builds each from its config section, and a test or a script can hand in its own.
    batch_pre: the preprocessing a batch gets on its way in (None for cached features, used as they are).
    The EMA (--ema) averages weights and buffers, so its BatchNorm statistics match them.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, device: torch.device,
                 scheduler=None, criterion: nn.Module | None = None, eval_criterion: nn.Module | None = None,
                 mix=None, scaler: torch.amp.GradScaler | None = None, ema: AveragedModel | None = None,
                 batch_pre: Preprocessing | None = None, precision: str = "fp32", channels_last: bool = False,
                 clip_grad: float | None = None):
        self.model, self.optimizer, self.scheduler, self.device = model, optimizer, scheduler, device
        self.criterion = criterion or nn.CrossEntropyLoss()
        self.eval_criterion = eval_criterion or nn.CrossEntropyLoss()
        self.mix, self.scaler, self.ema, self.batch_pre = mix, scaler, ema, batch_pre
        self.precision, self.channels_last, self.clip_grad = precision, channels_last, clip_grad

    @classmethod
    def from_config(cls, cfg: Config, model: nn.Module, num_classes: int, device: torch.device,
                    batch_pre: Preprocessing | None, optimizer_steps_per_epoch: int, budget: Budget | None = None,
                    class_weights: torch.Tensor | None = None) -> TrainStep:
        """The run's step: the optimizer (train, with model.backbone_lr_scale), its schedule (train, or the
        budget's clock), the loss, MixUp/CutMix (data), the fp16 scaler and the EMA (train)."""
        t = cfg.train
        optimizer = build_optimizer(t, cfg.model, model)
        return cls(
            model, optimizer, device=device,
            scheduler=build_scheduler(t, optimizer, optimizer_steps_per_epoch, budget),
            # the training loss (also takes soft targets), weighted per class with --class-weights (imbalance.py);
            # validation's loss is never weighted, so runs with and without weights compare
            criterion=nn.CrossEntropyLoss(weight=class_weights.to(device) if class_weights is not None else None,
                                          label_smoothing=t.label_smoothing),
            eval_criterion=nn.CrossEntropyLoss(label_smoothing=t.label_smoothing),
            mix=batch_mixer(cfg.data, num_classes),
            # fp16's narrow range needs the loss scaled up before backward (bf16 and fp32 do not)
            scaler=torch.amp.GradScaler(device.type) if t.precision == "fp16" else None,
            ema=AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True) if t.ema else None,
            batch_pre=batch_pre, precision=t.precision, channels_last=t.channels_last, clip_grad=t.clip_grad)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return prepare_batch(images, self.batch_pre, self.device, self.channels_last)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def forward_backward(self, forward: nn.Module, images: torch.Tensor, targets: torch.Tensor, group: int = 1,
                         no_sync=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch: inputs (mixed with --mixup/--cutmix) through `forward`, the loss scaled to the mean over
        its accumulation group (and by the fp16 scaler), backward. no_sync: DDP's no_sync context, for a
        batch whose gradients stay local (the group's last batch averages them over the processes). Returns
        the logits, the unscaled loss and the labels accuracy counts (the dominant one of mixed targets)."""
        x, y = self.prepare(images), targets.to(self.device, non_blocking=True)
        target = y
        if self.mix is not None:
            x, target = self.mix(x, y)
            y = target.argmax(1)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        with no_sync() if no_sync is not None else nullcontext():
            with autocast(self.device, self.precision):
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
        if self.clip_grad:  # the norm before clipping: what diagnostics and the log should see
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
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

    def state_dict(self) -> dict:
        """What last.pt keeps of the step, for resuming."""
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "ema": self.ema.state_dict() if self.ema is not None else None}

    def load_state_dict(self, saved: dict) -> None:
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scaler and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None and saved.get("ema"):
            self.ema.load_state_dict(saved["ema"])
        if self.scheduler and saved.get("scheduler"):
            self.scheduler.load_state_dict(saved["scheduler"])

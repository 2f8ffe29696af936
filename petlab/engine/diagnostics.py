"""Training rules, after the seed projects' debugger rules: each fires at most once per run.

A firing rule becomes a warning in the log, an event in the tracker and an entry in
results.json. Epoch-level rules are computed from the metrics history alone, so a resumed run
judges exactly as an uninterrupted one would; the fired set is checkpointed with the state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn

from petlab.config import DiagnosticsConfig
from petlab.engine.hooks import BatchAt, Hook
from petlab.monitor import VAL_LOSS

log = logging.getLogger(__name__)

RULES = ("vanishing_gradients", "exploding_gradients", "loss_not_decreasing", "overfitting", "poor_initialisation",
         "dead_activations", "data_loading_bottleneck")


def gradient_norm(model: nn.Module) -> float:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


class Diagnostics:
    def __init__(self, cfg: DiagnosticsConfig, num_classes: int, events: list[dict],
                 emit: Callable[[dict], None] | None = None):
        self.cfg, self.num_classes = cfg, num_classes
        self.events = events  # TrainState.events: survives resume, ends up in results.json
        self.emit = emit or (lambda event: None)
        self._hooks, self._dead = [], {}

    def fired(self, rule: str) -> bool:
        return any(e["rule"] == rule for e in self.events)

    def fire(self, rule: str, message: str, epoch: int, step: int | None = None, **data) -> None:
        if not self.cfg.enabled or self.fired(rule):
            return
        event = {"rule": rule, "epoch": epoch, "step": step, "message": message, **data}
        self.events.append(event)
        log.warning("diagnostics: %s: %s", rule, message)
        self.emit(event)

    # ------------------------------------------------------------- first batch of a fresh run
    def watch_activations(self, model: nn.Module) -> None:
        """Hooks on every ReLU for one forward pass: which share of channels never fires."""
        if not self.cfg.enabled:
            return
        for name, module in model.named_modules():
            if isinstance(module, (nn.ReLU, nn.ReLU6)):
                self._hooks.append(module.register_forward_hook(self._dead_hook(name)))

    def _dead_hook(self, name: str):
        def hook(module, inputs, output):
            if output.dim() < 2:
                return
            per_channel = output.detach().float().transpose(0, 1).reshape(output.shape[1], -1)
            dead = float((per_channel.amax(dim=1) <= 0).float().mean())
            self._dead[name] = max(dead, self._dead.get(name, 0.0))  # modules reused in one forward
        return hook

    def check_first_batch(self, loss: float) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        expected = math.log(self.num_classes)
        if not math.isfinite(loss) or loss > self.cfg.init_loss_factor * expected:
            self.fire("poor_initialisation",
                      f"first-batch loss {loss:.3f} is far above ln({self.num_classes}) = {expected:.3f}: "
                      "the initial outputs are overconfident; check the head's initialisation and the input scale",
                      epoch=1, step=0, loss=loss, expected=expected)
        if self._dead:
            layer, share = max(self._dead.items(), key=lambda kv: kv[1])
            if share > self.cfg.dead_fraction:
                self.fire("dead_activations",
                          f"{share:.0%} of the channels of {layer} never fire on the first batch "
                          "(biases too negative, or lr/initialisation too large)",
                          epoch=1, step=0, layer=layer, dead_fraction=share)
            self._dead = {}

    # ------------------------------------------------------------- every step
    def check_gradients(self, model: nn.Module, grad_norm: float, epoch: int, step: int, layers: bool = True) -> None:
        """The total norm against exploding_grad whenever the Trainer computed it (log and check steps);
        with layers, also the per-layer vanishing check (every check_every_steps)."""
        if not math.isfinite(grad_norm) or grad_norm > self.cfg.exploding_grad:
            self.fire("exploding_gradients",
                      f"gradient norm {grad_norm:.3g} exceeds {self.cfg.exploding_grad:g}: lower the lr or clip",
                      epoch=epoch, step=step, grad_norm=grad_norm)
        if not layers or step % self.cfg.check_every_steps or self.fired("vanishing_gradients"):
            return
        # Relative to the layer that learns most: a converged model has tiny gradients everywhere,
        # a vanishing one has them tiny only near the input.
        means = [(float(p.grad.abs().mean()), name) for name, p in model.named_parameters()
                 if p.grad is not None and p.dim() > 1]
        if len(means) < 2:
            return
        (smallest, layer), (largest, _) = min(means), max(means)
        if largest > 0 and smallest / largest < self.cfg.vanishing_grad_ratio:
            self.fire("vanishing_gradients",
                      f"mean |gradient| of {layer} is {smallest:.2e}, {largest / max(smallest, 1e-30):.1e}x smaller "
                      "than the largest layer's: the layers nearest the input barely learn (saturating "
                      "activations, depth without residuals or normalisation)",
                      epoch=epoch, step=step, layer=layer, mean_abs_grad=smallest, ratio=smallest / largest)

    # ------------------------------------------------------------- every epoch
    def check_epoch(self, history: list[dict]) -> None:
        row, epoch = history[-1], history[-1]["epoch"]
        p = self.cfg.loss_patience
        if len(history) > p:
            before = min(r["train_loss"] for r in history[:-p])
            recent = min(r["train_loss"] for r in history[-p:])
            if recent > before * (1 - self.cfg.loss_min_delta):
                self.fire("loss_not_decreasing",
                          f"train loss has not fallen {self.cfg.loss_min_delta:.0%} below {before:.4f} "
                          f"in {p} epochs (best recent {recent:.4f}): lr too low (or zero), or frozen weights",
                          epoch=epoch, best_before=before, best_recent=recent)
        k = self.cfg.overfit_patience
        if len(history) > k:
            window = history[-(k + 1):]
            gaps = [r[VAL_LOSS] - r["train_loss"] for r in window]
            rising = all(b[VAL_LOSS] > a[VAL_LOSS] for a, b in zip(window, window[1:]))
            widening = all(b > a for a, b in zip(gaps, gaps[1:]))
            if rising and widening:
                self.fire("overfitting",
                          f"val loss rose for {k} epochs ({window[0][VAL_LOSS]:.4f} -> {row[VAL_LOSS]:.4f}) "
                          f"while the val-train loss gap grew to {gaps[-1]:.4f}: more data or augmentation, "
                          "regularisation, or early stopping",
                          epoch=epoch, val_loss=row[VAL_LOSS], gap=gaps[-1])
        wait = row.get("data_wait_fraction")
        if wait is not None and wait > self.cfg.data_wait_fraction:
            self.fire("data_loading_bottleneck",
                      f"{wait:.0%} of training time was spent waiting for data: raise data.num_workers "
                      "or keep the decoded-image cache on a fast disk",
                      epoch=epoch, data_wait_fraction=wait)


class DiagnosticsHook(Hook):
    """The rules in the training loop: dead activations and the initial loss on a fresh run's first batch, the
    gradient norm wherever it is read (per layer every check_every_steps), the epoch rules after each epoch.
    What fired is kept in its state (so in last.pt), in results.json's diagnostics and sent to the tracker."""

    def __init__(self, cfg: DiagnosticsConfig, num_classes: int, tracker):
        self.cfg, self.num_classes, self.tracker = cfg, num_classes, tracker
        self.diagnostics: Diagnostics | None = None
        self.events: list[dict] = []  # the rules that fired, in order

    def state_dict(self) -> dict:
        return {"events": self.events}

    def load_state_dict(self, state: dict) -> None:
        self.events = list(state["events"])

    def results(self, trainer) -> dict:
        return {"diagnostics": self.events}

    def on_fit_start(self, trainer) -> None:
        def emit(event):
            self.tracker.log_event(event["rule"], event["message"], {"epoch": event["epoch"]})
        self.diagnostics = Diagnostics(self.cfg, self.num_classes, self.events, emit)

    def on_batch_start(self, trainer, at: BatchAt) -> None:
        if at.first_of_run:
            self.diagnostics.watch_activations(trainer.model)

    def needs_grad_norm(self, trainer, at: BatchAt) -> bool:
        return self.cfg.enabled and at.opt_step % self.cfg.check_every_steps == 0

    def on_batch_end(self, trainer, at: BatchAt) -> None:
        if at.first_of_run:
            self.diagnostics.check_first_batch(at.loss.item())
        if at.grad_norm is not None:
            self.diagnostics.check_gradients(trainer.model, at.grad_norm, at.epoch + 1, at.opt_step,
                                             layers=self.needs_grad_norm(trainer, at))

    def on_epoch_trained(self, trainer, row: dict) -> None:
        self.diagnostics.check_epoch(trainer.state.history)

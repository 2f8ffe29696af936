"""Checkpoints that survive a crash mid-write (written to a temp file, then renamed), the RNG state they
carry, and what a resumed run must share with them. They are read, without running code, by
petlab.rundir.load_checkpoint."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from petlab.config import Config
from petlab.data.transforms import Preprocessing
from petlab.engine.hooks import Hook
from petlab.errors import ConfigError, DatasetError
from petlab.fileio import atomic_write
from petlab.rundir import checkpoint_path, load_checkpoint


def atomic_save(obj, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


# What a resumed run must share with the part that wrote its checkpoint: everything that shapes the
# model, the labels and the optimisation. Paths, threads and worker counts may change between parts.
NOT_RECIPE = {"output_dir", "data.data_dir", "data.cache_dir", "data.num_workers", "train.threads",
              "tracking", "diagnostics"}


def recipe_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, outside NOT_RECIPE."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if dotted in NOT_RECIPE:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += recipe_differences(a, b, f"{dotted}.")
        elif a != b:
            differences.append(f"{dotted}: {a!r} -> {b!r}")
    return differences


def check_resumable(ckpt: dict, path: Path, classes: list[str], config: dict,
                    class_photos: dict[str, str] | None = None) -> None:
    """Refuse to continue from a checkpoint whose classes, photos or recipe are not this run's: a renamed
    class folder would silently permute the labels (and two folders renamed into each other keep every
    name), an edited config.yaml would train another recipe."""
    if list(ckpt.get("classes") or []) != list(classes):
        saved, now = list(ckpt.get("classes") or []), list(classes)
        changed = sorted(set(saved) ^ set(now)) or "the same names in another order"
        raise DatasetError(f"cannot resume from {path}: it was trained on {len(saved)} classes, the dataset now has "
                           f"{len(now)} (differing: {changed}); renamed, added or removed class folders would "
                           "permute the labels. Restore the folders, or start a new run")
    saved_photos = ckpt.get("class_photos") or {}
    moved = sorted(c for c in saved_photos if class_photos and class_photos.get(c) != saved_photos[c])
    if moved:
        raise DatasetError(f"cannot resume from {path}: the photos of {len(moved)} class(es) changed since it was "
                           f"saved ({', '.join(map(repr, moved[:5]))}); class folders renamed into each other would "
                           "permute the labels. Restore the folders, or start a new run")
    differences = recipe_differences(ckpt.get("config") or {}, config)
    if differences:
        raise ConfigError(f"cannot resume from {path}: config.yaml no longer matches the run's recipe "
                          f"({'; '.join(differences[:5])}); restore it, or start a new run")


class CheckpointSaver:
    """A run's best.pt and last.pt. last.pt can resume training (the step's optimizer, schedule, scaler and
    EMA, and the RNG state); best.pt holds only what evaluation and export need (a third the size). Only
    rank 0 writes (every rank holds the same weights); run_dir None writes nothing (a cross-validation fold)."""

    def __init__(self, run_dir: Path | None, writes_files: bool, cfg: Config, classes: list[str],
                 pre: Preprocessing):
        self.run_dir, self.writes_files = run_dir, writes_files and run_dir is not None
        self.cfg, self.classes, self.pre = cfg, classes, pre
        self.class_photos: dict[str, str] | None = None  # Splits.class_photos(), set by the run: kept and checked
        if self.run_dir is not None:
            checkpoint_path(self.run_dir).parent.mkdir(parents=True, exist_ok=True)

    def save(self, name: str, model: nn.Module, state: dict, step=None, hooks: dict | None = None) -> None:
        """step: the TrainStep, for a resumable checkpoint; None for best.pt. hooks: each stateful hook's
        state_dict by its key (Trainer.hook_states)."""
        if not self.writes_files:
            return
        ckpt = {"model": model.state_dict(), "state": state, "hooks": hooks or {}, "config": self.cfg.to_dict(),
                "classes": self.classes, "preprocessing": self.pre.to_dict(), "arch": self.cfg.model.arch,
                **({"class_photos": self.class_photos} if self.class_photos else {})}
        if step is not None:
            ckpt.update(rng=rng_state(), **step.state_dict())
        atomic_save(ckpt, checkpoint_path(self.run_dir, name))

    def restore(self, path: Path, model: nn.Module, step) -> dict:
        """Loads last.pt into the model and the step and the RNGs, once check_resumable agrees; returns the
        checkpoint: its "state" (the TrainState's fields) and "hooks" (each hook's state by its key)."""
        ckpt = load_checkpoint(path)
        check_resumable(ckpt, path, self.classes, self.cfg.to_dict(), self.class_photos)
        model.load_state_dict(ckpt["model"])
        step.load_state_dict(ckpt)
        set_rng_state(ckpt["rng"])
        return ckpt


class Checkpointing(Hook):
    """The saver in the training loop: best.pt (the evaluated weights) when the monitored metric improved, that is
    when trainer.state.best_epoch is the epoch just recorded, and last.pt (all that resuming needs) after every
    epoch and at the end of the fit. A fit that ends before its first epoch (cross-validation chose no training:
    best_epoch 0) keeps the model as initialised as best.pt."""

    def __init__(self, saver: CheckpointSaver):
        self.saver = saver

    def _save(self, trainer, best: bool) -> None:
        state, hooks = asdict(trainer.state), trainer.hook_states()
        if best:
            self.saver.save("best.pt", trainer.eval_model, state, hooks=hooks)
        self.saver.save("last.pt", trainer.model, state, trainer.step, hooks)

    def on_epoch_trained(self, trainer, row: dict) -> None:
        self._save(trainer, best=trainer.state.best_epoch == row["epoch"])

    def on_fit_end(self, trainer) -> None:
        self._save(trainer, best=trainer.state.best_epoch == 0)

"""Choose settings by k-fold cross-validation on train, so that a few-shot run learns from every photo.

With 5 photos a breed, carving 20% off for validation costs a fifth of the data and still leaves a
validation split too small to choose anything by. Instead (`train.cv_folds: K`): split train into K
stratified folds; for each candidate learning rate (`train.cv_lrs`) and each fold, train on the other
folds with the run's own schedule and predict the held-out fold after every epoch. Every training
photo is then predicted once per (lr, epoch) by a model that never saw it: the out-of-fold accuracy.
The best (lr, epoch) by the run's monitored metric (train.monitor, petlab/monitor.py: out-of-fold accuracy,
ties to the lower loss, or the reverse) is refit on all of train, and the out-of-fold predictions of the
chosen setting are the run's validation metrics. Test plays no part. Each fold is a Trainer with the run's
own hooks; a hook of this module keeps its held-out predictions.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch.utils.data import DataLoader, Subset

from petlab import rundir
from petlab.config import Config, TrainConfig
from petlab.data.cache import DecodedImages
from petlab.data.loaders import make_loader, train_order
from petlab.data.transforms import Preprocessing
from petlab.engine.features import backbone_features, feature_dataset
from petlab.engine.hooks import Hook, Validation
from petlab.engine.imbalance import dataset_labels
from petlab.engine.metrics import mean_nll
from petlab.engine.trainer import Trainer
from petlab.errors import DatasetError
from petlab.monitor import VAL_ACCURACY, Monitor
from petlab.progress import inner_progress_hidden, progress

log = logging.getLogger(__name__)


class KeepHeldOut(Hook):
    """A fold's held-out predictions after every epoch: into[epoch, rows] for the photos it held out."""

    def __init__(self, into: np.ndarray, rows: np.ndarray):
        self.into, self.rows = into, rows

    def on_validation_end(self, trainer, val: Validation) -> None:
        self.into[val.epoch, self.rows] = val.probabilities


def candidate_lrs(t: TrainConfig) -> list[float]:
    return list(t.cv_lrs) or [t.lr]


def fold_loader_factory(cfg: Config, model: torch.nn.Module, train_images: DecodedImages, pre: Preprocessing,
                        head_only: bool, cache_dir: Path, device: torch.device) -> Callable:
    """(train indices, held-out indices) -> {"train": loader, "val": loader} over the training images."""
    batch, eval_batch = cfg.train.batch_size, cfg.train.eval_batch()
    if head_only:
        features = torch.from_numpy(backbone_features(cfg, model, train_images, pre, "train", cache_dir, device))
        labels = torch.from_numpy(train_images.labels)

        def datasets(train_idx, val_idx):
            return (feature_dataset(features, labels, True, cfg.data.feature_flips, train_idx),
                    feature_dataset(features, labels, False, False, val_idx))
    else:
        augmented = make_loader(train_images, pre, True, batch, 0, None, cfg.data.crop_scale_min, cfg.data.hflip,
                                cfg.data.augment, cfg.data.policy).dataset
        plain = make_loader(train_images, pre, False, eval_batch, 0).dataset

        def datasets(train_idx, val_idx):
            return Subset(augmented, train_idx), Subset(plain, val_idx)

    def loaders(train_idx: np.ndarray, val_idx: np.ndarray) -> dict:
        train, val = datasets(train_idx, val_idx)
        return {"train": DataLoader(train, batch_size=batch, num_workers=cfg.data.num_workers,
                                    **train_order(cfg.train.sampler, dataset_labels(train), torch.Generator())),
                "val": DataLoader(val, batch_size=eval_batch, num_workers=cfg.data.num_workers)}

    return loaders


def make_folds(labels: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    counts = np.bincount(labels)
    if counts[counts > 0].max() < k:
        raise DatasetError(f"train.cv_folds: {k} folds need a class with at least {k} photos; the largest has "
                           f"{counts.max()}. Use fewer folds.")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    # A class with fewer photos than folds is held out in fewer folds; sklearn warns, which is expected here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return list(splitter.split(np.zeros(len(labels)), labels))


def first_candidate_epoch(cfg: Config) -> int:
    """0 when the model as initialised already knows something (ImageNet's rows in its head), else 1:
    a fresh random head untrained is no candidate."""
    return 0 if cfg.model.head_init == "imagenet" else 1


def cross_validate(cfg: Config, make_model: Callable[[], torch.nn.Module], fold_loaders: Callable,
                   labels: np.ndarray, classes: list[str], pre: Preprocessing, head_only: bool,
                   device: torch.device) -> dict:
    """Returns {"table": [{lr, epoch, accuracy, loss}], "chosen": {lr, epochs, accuracy, loss}, "oof": probs}.
    Epoch 0 rows (first_candidate_epoch) hold the initial model's held-out predictions, the same for every lr."""
    k, lrs, epochs = cfg.train.cv_folds, candidate_lrs(cfg.train), cfg.train.epochs
    first = first_candidate_epoch(cfg)
    folds = make_folds(labels, k, cfg.seed)
    oof = np.zeros((len(lrs), epochs + 1, len(labels), len(classes)), np.float32)  # [lr, epoch (0..), photo]
    trainer_log = logging.getLogger("petlab.engine.trainer")
    level = trainer_log.level
    trainer_log.setLevel(logging.WARNING)  # one line per fold here, not one per fold epoch
    bar = progress(total=len(lrs) * k, desc=f"cross-validation ({k} folds x {len(lrs)} lr)", unit="fold")
    try:
        for li, lr in enumerate(lrs):
            # the refit's diagnostics are the run's; folds would repeat them
            fold_cfg = cfg.updated({"train.lr": lr, "train.cv_folds": None, "train.early_stopping_patience": None,
                                    "diagnostics.enabled": False})
            for fi, (train_idx, val_idx) in enumerate(folds):
                trainer = Trainer(fold_cfg, make_model(), pre, fold_loaders(train_idx, val_idx), None, classes,
                                  device=device, features=head_only, hooks=[KeepHeldOut(oof[li], val_idx)])
                if first == 0 and li == 0:  # untrained, the model is the same for every lr: predicted once
                    _, oof[:, 0, val_idx], _ = trainer.predict(trainer.loaders["val"], "held-out fold (epoch 0)")
                with inner_progress_hidden():
                    trainer.fit()
                bar.update()
                log.info("cross-validation lr %.2e, fold %d/%d: held-out accuracy %.3f after %d epochs",
                         lr, fi + 1, k, trainer.state.history[-1][VAL_ACCURACY], epochs)
    finally:
        trainer_log.setLevel(level)
        bar.close()
    table = []
    for li, lr in enumerate(lrs):
        for e in range(first, epochs + 1):
            probs = oof[li, e]
            table.append({"lr": lr, "epoch": e, "accuracy": float((probs.argmax(1) == labels).mean()),
                          "loss": mean_nll(probs, labels)})
    best = Monitor(cfg.train.monitor).best_of(table)
    chosen = {"lr": best["lr"], "epochs": best["epoch"], "accuracy": best["accuracy"], "loss": best["loss"]}
    log.info("cross-validation (%d folds, lr in %s, %d-%d epochs) chose lr %.2e and %d epochs: out-of-fold "
             "accuracy %.4f", k, lrs, first, epochs, chosen["lr"], chosen["epochs"], chosen["accuracy"])
    if chosen["epochs"] == 0:
        log.info("no training scored best: the refit keeps the model as initialised (its ImageNet head rows)")
    li = lrs.index(best["lr"])
    return {"folds": k, "lrs": lrs, "table": table, "chosen": chosen, "oof": oof[li, best["epoch"]]}


def select_or_resume(cfg: Config, run_dir: Path, resuming: bool, model: torch.nn.Module, train_images: DecodedImages,
                     classes: list[str], pre: Preprocessing, head_only: bool, cache_dir: Path,
                     device: torch.device) -> dict:
    """The run's cross-validation: read back when a resumed run already finished it, else run and saved.
    Every fold starts from a copy of `model` as it is now (pretrained backbone, initial head)."""
    result = load(run_dir) if resuming else None
    if result is None:
        template = copy.deepcopy(model).cpu()
        folds = fold_loader_factory(cfg, model, train_images, pre, head_only, cache_dir, device)
        result = cross_validate(cfg, lambda: copy.deepcopy(template), folds, train_images.labels, classes, pre,
                                head_only, device)
        save(result, run_dir)
    return result


def refit_config(cfg: Config, result: dict) -> Config:
    """The run's config with the chosen learning rate: the refit on all of train (its epochs stop at the chosen
    count through Trainer.fit(until_epoch), so the schedule is the one the folds were scored with)."""
    return cfg.updated({"train.lr": result["chosen"]["lr"]})


def save(result: dict, run_dir: Path) -> None:
    """cv.json (the table and the choice) and cv_oof.npy: a resumed run does not cross-validate again."""
    np.save(run_dir / "cv_oof.npy", result["oof"])
    (run_dir / rundir.CV).write_text(json.dumps({k: v for k, v in result.items() if k != "oof"}, indent=2))


def load(run_dir: Path) -> dict | None:
    try:
        result = json.loads((run_dir / rundir.CV).read_text())
        result["oof"] = np.load(run_dir / "cv_oof.npy")
    except (OSError, ValueError):
        return None
    return result

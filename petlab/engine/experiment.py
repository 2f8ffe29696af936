"""One experiment, start to finish: run directory, data, model, training, final evaluation.

Run directory (timm-style, one per run):
  config.yaml          the fully resolved config (what `--resume` and evaluate.py read back)
  model_summary.txt    torchinfo summary
  metrics.csv          one row per epoch
  checkpoints/         best.pt (by validation accuracy) and last.pt (end of the last epoch)
  results.json         val and test metrics of best.pt, skipped files, diagnostics, tracking keys, git
  confusion_matrix.png, learning_curves.png, misclassified.png
  comet/<key>.zip      the Comet offline archive (when there is no COMET_API_KEY)
  profile/             torch.profiler trace (with --profile)
  train.log
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torchinfo
import yaml
from tqdm.contrib.logging import logging_redirect_tqdm

from petlab.config import Config, ConfigError, config_from_dict
from petlab.data.cache import cache_root, decode_split
from petlab.data.datasets import load_splits
from petlab.data.loaders import make_loader
from petlab.data.transforms import Preprocessing
from petlab.engine import crossval, distributed
from petlab.engine.checkpoint import load_checkpoint
from petlab.engine.features import feature_loaders, uses_feature_cache
from petlab.engine.metrics import HEADLINE, classification_metrics, mean_nll
from petlab.engine.speed import resolve_speed_settings
from petlab.engine.trainer import Interrupted, StopRun, Trainer, resolve_device, seed_everything
from petlab.models import ARCHS, build_model, head_parameters
from petlab.models.imagenet_head import head_init_report, match_imagenet
from petlab.registry.store import model_name
from petlab.reports.figures import (
    plot_confusion_matrices,
    plot_cross_validation,
    plot_learning_curves,
    plot_misclassified,
)
from petlab.tracking import Tracker, create_tracker, git_state, installed_packages

log = logging.getLogger("petlab")
EXIT_INTERRUPTED = 130


def setup_logging(run_dir: Path | None = None) -> logging.Handler | None:
    """Console logging, plus the run's train.log; returns that file's handler so it can be removed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if run_dir is None:
        return None
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def new_run_dir(cfg: Config) -> Path:
    base = Path(cfg.output_dir) / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.model.arch}-{cfg.task}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    run_dir.mkdir(parents=True)
    return run_dir


def read_run_config(run_dir: Path) -> Config:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"not a run directory (no config.yaml): {run_dir}")
    return config_from_dict(yaml.safe_load(path.read_text()))


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def model_summary(model, image_size: int):
    """torchinfo's ModelStatistics (str() is the table)."""
    # eval mode: a train-mode forward would move BatchNorm statistics before training starts
    return torchinfo.summary(model, input_size=(1, 3, image_size, image_size), verbose=0, mode="eval",
                             col_names=("output_size", "num_params", "mult_adds"), device="cpu")


def run_tags(cfg: Config) -> list[str]:
    return [f"task:{cfg.task}", f"arch:{cfg.model.arch}", f"dataset:{cfg.data.dataset}", *cfg.tracking.tags]


def track_setup(tracker: Tracker, cfg: Config, splits, pre, decoded, summary, trainable: int, git: dict) -> None:
    """Everything known before training: hyperparameters, data, model summary, provenance."""
    params = {**cfg.flat(), **{f"preprocessing.{k}": v for k, v in pre.to_dict().items()},
              **{f"dataset.size.{k}": v for k, v in splits.sizes().items()},
              **{f"dataset.usable.{k}": len(d.labels) for k, d in decoded.items()},
              "dataset.classes": splits.classes, "dataset.num_classes": len(splits.classes)}
    tracker.log_parameters(params)
    tracker.add_tags(run_tags(cfg))
    tracker.log_text("model_summary", str(summary))
    tracker.log_others({"params_total": summary.total_params, "params_trainable": trainable,
                        "mult_adds": summary.total_mult_adds, "git_commit": git["commit"],
                        "git_dirty": git["dirty"], "dataset_root": splits.root})
    tracker.log_others({f"package.{name}": version for name, version in sorted(installed_packages().items())})


def prepare_data(cfg: Config):
    """Splits, preprocessing and decoded images; fills in the config's data defaults."""
    cross_validated = cfg.train.cv_folds is not None
    splits = load_splits(cfg.data.dataset, cfg.task, cfg.data.data_dir, cfg.data.species,
                         cfg.data.val_fraction, cfg.seed, carve=not cross_validated)
    if cross_validated and splits.val:  # settings come from folds of train: a shipped val/ is training data too
        splits.train, splits.val = sorted(splits.train + splits.val), []
        splits.notes["val"] = f"none: {cfg.train.cv_folds}-fold cross-validation on train (shipped val/ joined train)"
    elif cross_validated:
        splits.notes["val"] = f"none: {cfg.train.cv_folds}-fold cross-validation on train"
    cfg.data.dataset = splits.dataset
    pre = Preprocessing.for_model(ARCHS[cfg.model.arch], cfg.data.image_size, cfg.data.resize_ratio)
    cfg.data.image_size = pre.image_size
    cache = cache_root(cfg.data.cache_dir)
    decoded = {name: decode_split(samples, pre, cache, name)
               for name, samples in (("train", splits.train), ("val", splits.val), ("test", splits.test))
               if samples}
    return splits, pre, decoded


def build_loaders(cfg: Config, pre: Preprocessing, decoded: dict) -> dict:
    t = cfg.train
    eval_bs = t.eval_batch()
    return {
        "train": make_loader(decoded["train"], pre, True, t.batch_size, cfg.data.num_workers, torch.Generator(),
                             cfg.data.crop_scale_min, cfg.data.hflip, cfg.data.augment, cfg.data.policy),
        **{s: make_loader(decoded[s], pre, False, eval_bs, cfg.data.num_workers)
           for s in ("val", "test") if s in decoded},
    }


def run_experiment(cfg: Config | None = None, resume: Path | None = None, on_epoch=None) -> tuple[Path, int]:
    """Train (or resume) one run. Returns its directory and an exit code (0, or 130 if interrupted).

    on_epoch(row) runs after each epoch; raising StopRun ends the run with that status (sweeps prune so).
    """
    started = time.perf_counter()
    if resume is not None:
        cfg = read_run_config(Path(resume))
    device = resolve_device(cfg.train.device)
    dist = distributed.setup(cfg, device)  # one process: a no-op
    if resume is not None:
        run_dir = Path(resume)
    else:
        run_dir = dist.broadcast(new_run_dir(cfg) if dist.is_main else None)
    handler = setup_logging(run_dir if dist.is_main else None)
    try:
        with logging_redirect_tqdm():
            return run_dir, _run(cfg, run_dir, resume is not None, started, on_epoch, dist, device)
    finally:  # a sweep worker runs many experiments: each train.log gets only its own run
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        distributed.teardown()


def previous_record(run_dir: Path) -> dict:
    """What the interrupted part of a resumed run recorded (its Comet key, its start time)."""
    try:
        return json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return {}


def _run(cfg: Config, run_dir: Path, resuming: bool, started: float, on_epoch, dist: distributed.Distributed,
         device: torch.device) -> int:
    previous = previous_record(run_dir) if resuming else {}
    started_at = previous.get("started_at") or datetime.now().isoformat(timespec="seconds")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    resolve_speed_settings(cfg, device)
    log.info("run directory: %s", run_dir)
    with dist.main_first():  # rank 0 decodes; the other ranks then read its cache
        splits, pre, decoded = prepare_data(cfg)
    log.info("%s (%s): %d classes, sizes %s; %s", splits.dataset, splits.root, len(splits.classes),
             splits.sizes(), splits.notes)
    if dist.is_main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    head_init = None
    imagenet_rows = None
    if cfg.model.head_init == "imagenet":
        matches = match_imagenet(splits.classes, cfg.task)
        head_init = head_init_report(splits.classes, matches, cfg.task)
        imagenet_rows = (splits.classes, matches)
        log.info("head_init imagenet: %d of %d classes start from ImageNet's rows: %s", len(matches),
                 len(splits.classes), head_init["rows"])
    seed_everything(cfg.seed)
    model, weights_report = build_model(cfg.model.arch, len(splits.classes), cfg.model.pretrained,
                                        cfg.model.weights, cfg.model.dropout, imagenet_rows)
    summary = model_summary(model, pre.image_size)
    summary_path = run_dir / "model_summary.txt"
    if dist.is_main and not summary_path.is_file():
        summary_path.write_text(f"{summary}\n")
    seed_everything(cfg.seed)
    head_ids = head_parameters(model, cfg.model.arch)
    trainable = sum(p.numel() for p in model.parameters() if id(p) in head_ids or not cfg.model.freeze_backbone)
    git = git_state()
    # One tracked experiment per run, however many processes train it: rank 0's.
    tracker = create_tracker(cfg, run_dir, (previous.get("tracking") or {}).get("key")) if dist.is_main else Tracker()
    if dist.is_main and not resuming:
        track_setup(tracker, cfg, splits, pre, decoded, summary, trainable, git)
    try:
        return _train(cfg, run_dir, resuming, started, splits, pre, decoded, model, weights_report, tracker, on_epoch,
                      {"params_total": summary.total_params, "params_trainable": trainable,
                       "mult_adds": summary.total_mult_adds, "git": git, "tags": run_tags(cfg),
                       "head_init": head_init, "classes_without_val": splits.classes_without_val,
                       "started_at": started_at, "world_size": dist.world_size}, dist, device)
    finally:
        tracker.end()


def _train(cfg, run_dir, resuming, started, splits, pre, decoded, model, weights_report, tracker, on_epoch,
           facts, dist, device) -> int:
    head_only = uses_feature_cache(cfg)
    cache = cache_root(cfg.data.cache_dir)
    if head_only:  # frozen backbone, no augmentation: the backbone runs once per image, ever
        log.info("frozen backbone without augmentation: training the head on cached backbone features")
        with dist.main_first():
            loaders = feature_loaders(cfg, model.to(device), decoded, pre, cache, device)
    else:
        loaders = build_loaders(cfg, pre, decoded)
    loaders = {split: distributed.shard(loader, dist, split == "train", cfg.seed) for split, loader in loaders.items()}
    cv, train_cfg = None, cfg
    if cfg.train.cv_folds:
        if dist.enabled:
            raise ConfigError("train.cv_folds runs in one process; start it without torchrun")
        cv = crossval.select_or_resume(cfg, run_dir, resuming, model, decoded["train"], splits.classes, pre,
                                       head_only, cache, device)
        tracker.log_others({"cv_folds": cv["folds"], "cv_chosen_lr": cv["chosen"]["lr"],
                            "cv_chosen_epochs": cv["chosen"]["epochs"], "cv_accuracy": cv["chosen"]["accuracy"]})
        train_cfg = crossval.refit_config(cfg, cv)
    trainer = Trainer(train_cfg, model, pre, loaders, run_dir, splits.classes, tracker, head_only, dist)
    trainer.on_epoch = on_epoch
    last = run_dir / "checkpoints" / "last.pt"
    if resuming and last.is_file():
        trainer.resume(last)
    if cfg.model.head_init == "imagenet" and not trainer.state.initial and not trainer.state.history:
        trainer.state.initial = initial_metrics(trainer, loaders, splits.classes)
    skipped = {name: d.skipped_summary() for name, d in decoded.items()}
    base = {"run_dir": str(run_dir), "task": cfg.task, "arch": cfg.model.arch, "dataset": splits.dataset,
            "dataset_root": splits.root, "classes": splits.classes, "split_sizes": splits.sizes(),
            "usable_sizes": {n: len(d.labels) for n, d in decoded.items()}, "split_notes": splits.notes,
            "skipped_files": skipped, "pretrained_weights": weights_report, "feature_cache": head_only, **facts,
            "tracking": tracker.record()}
    if cv:
        base["cross_validation"] = {k: v for k, v in cv.items() if k != "oof"}
    try:
        if not trainer.state.finished:
            trainer.fit(cv["chosen"]["epochs"] if cv else None)
    except Interrupted:
        done = trainer.state.epoch
        where = f"checkpoints/last.pt holds epoch {done}" if done else "no epoch had finished yet"
        log.warning("interrupted: %s; continue with --resume %s", where, run_dir)
        if dist.is_main:
            write_json(run_dir / "results.json", {**base, "status": "interrupted",
                                                   "epochs_completed": trainer.state.epoch,
                                                   "diagnostics": trainer.state.events})
        tracker.log_others({"status": "interrupted", "epochs_completed": trainer.state.epoch})
        return EXIT_INTERRUPTED
    except StopRun as stop:
        log.info("stopped after epoch %d: %s", trainer.state.epoch, stop)
        if dist.is_main:
            write_json(run_dir / "results.json", {**base, "status": stop.status, "reason": str(stop),
                                                   "epochs_completed": trainer.state.epoch,
                                                   "best_val_accuracy": trainer.state.best_val_accuracy,
                                                   "diagnostics": trainer.state.events,
                                                   "wall_time_s": time.perf_counter() - started})
        tracker.log_others({"status": stop.status, "epochs_completed": trainer.state.epoch})
        return 0

    # Final numbers come from the best-by-validation checkpoint; test is only ever reported.
    dist.barrier()  # rank 0 has written best.pt
    trainer.model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"])
    final, shown = {}, None
    if cv:  # validation is the out-of-fold prediction of every training photo under the chosen setting
        labels = decoded["train"].labels
        oof = cv["oof"]
        final["val"] = {**classification_metrics(labels, oof, mean_nll(oof, labels), splits.classes),
                        "source": f"{cv['folds']}-fold cross-validation on train (out-of-fold)"}
        shown = (decoded["train"], labels, oof.argmax(1))
    for split in ("val", "test"):
        if split in loaders:
            targets, probs, loss = trainer.predict(loaders[split], split)
            final[split] = classification_metrics(targets, probs, loss, splits.classes)
            if split == "val":
                shown = (decoded["val"], targets, probs.argmax(1))
    if not dist.is_main:
        return 0
    state = trainer.state
    figures = write_figures(run_dir, final, splits.classes, state.history, shown, pre, cfg, cv)
    results = {**base, "status": "completed", "epochs_completed": state.epoch, "best_epoch": state.best_epoch,
               "epoch0": state.initial or None, "tta": cfg.train.tta, **final, "diagnostics": state.events,
               "wall_time_s": time.perf_counter() - started}
    track_results(tracker, cfg, run_dir, final, splits.classes, figures, results)
    results["tracking"] = tracker.record()  # the offline archive's name is known once tracking ends
    write_json(run_dir / "results.json", results)
    summary = ", ".join(f"{s} accuracy {m['accuracy']:.4f} (top-5 {m['top5_accuracy']:.4f})" for s, m in final.items())
    log.info("done in %.0fs: best epoch %d, %s -> %s", results["wall_time_s"], state.best_epoch, summary, run_dir)
    return 0


def initial_metrics(trainer: Trainer, loaders: dict, classes: list[str]) -> dict:
    """Val and test before any training: what the ImageNet rows of the head already know (epoch 0).
    A cross-validated run has no val split, so only test is measured."""
    initial = {}
    for split in ("val", "test"):
        loader = loaders.get(split)
        if loader is None:
            continue
        targets, probs, loss = trainer.predict(loader, f"{split} (epoch 0)")
        m = classification_metrics(targets, probs, loss, classes)
        initial[split] = {k: m[k] for k in (*HEADLINE, "n")}
    log.info("epoch 0 (before training): %s", ", ".join(f"{s} accuracy {m['accuracy']:.4f}"
                                                         for s, m in initial.items()))
    trainer.tracker.log_metrics({f"{s}_{k}": v for s, m in initial.items() for k, v in m.items() if k != "n"},
                                step=0, epoch=0)
    return initial


def write_figures(run_dir: Path, final: dict, classes: list[str], history: list[dict], shown: tuple, pre,
                  cfg: Config, cv: dict | None = None) -> dict[str, Path]:
    """shown: (decoded images, targets, predictions) of the validation photos (out-of-fold with cross-validation)."""
    figures = {"confusion_matrix": run_dir / "confusion_matrix.png",
               "learning_curves": run_dir / "learning_curves.png",
               "misclassified": run_dir / "misclassified.png"}
    plot_confusion_matrices(final, classes, figures["confusion_matrix"])
    plot_learning_curves({cfg.name: history}, figures["learning_curves"], f"{cfg.model.arch} on {cfg.data.dataset}")
    images, targets, preds = shown  # in loader order, which is the cache's order (val is not shuffled)
    wrong = np.flatnonzero(targets != preds)[:16]
    margin = (pre.resize_size - pre.image_size) // 2
    crops = [images.array[i][margin:margin + pre.image_size, margin:margin + pre.image_size] for i in wrong]
    plot_misclassified(crops, [classes[targets[i]] for i in wrong], [classes[preds[i]] for i in wrong],
                       figures["misclassified"],
                       f"misclassified {'out-of-fold training' if cv else 'validation'} images ({len(wrong)} shown)")
    if cv:
        figures["cross_validation"] = run_dir / "cross_validation.png"
        plot_cross_validation(cv, figures["cross_validation"])
    return figures


def track_results(tracker: Tracker, cfg: Config, run_dir: Path, final: dict, classes: list[str],
                  figures: dict[str, Path], results: dict) -> None:
    """Final metrics, per-class scores, figures and the best checkpoint; then close the experiment."""
    for split, metrics in final.items():
        tracker.log_metrics({f"{split}_{m}_final": metrics[m] for m in HEADLINE})
        tracker.log_text(f"{split}_most_confused", "\n".join(f"{p['true']} -> {p['predicted']}: {p['count']}"
                                                             for p in metrics["most_confused"]) or "none")
        tracker.log_others({f"{split}_most_confused": json.dumps(metrics["most_confused"])})
        tracker.log_metrics({f"{split}_{score}_{name}": value[score] for name, value in metrics["per_class"].items()
                             for score in ("precision", "recall", "f1")})
        tracker.log_confusion_matrix(metrics["confusion_matrix"], classes, f"{split} confusion matrix")
    for name, path in figures.items():
        tracker.log_image(path, name)
    tracker.log_others({"status": "completed", "best_epoch": results["best_epoch"],
                        "wall_time_s": results["wall_time_s"]})
    if cfg.tracking.log_model:
        tracker.log_model(model_name(cfg.task), run_dir / "checkpoints" / "best.pt")
    tracker.end()

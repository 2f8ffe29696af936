"""One experiment, start to finish. A run's life:

    with open_run(cfg) as run:                  # context.py: dirs, data, config resolved once, tracker
        model = build_run_model(run)            # seeded; ImageNet head rows; summary; tracked setup
        loaders = run_loaders(run, model)       # decoded images, or cached backbone features
        cv = cross_validation(run, model)       # few-shot: lr and epochs from folds of train (optional)
        trainer = Trainer(...)                  # trainer.py: epochs, checkpoints, early stopping
        trainer.fit()                           # resumable; Ctrl-C/SIGTERM anywhere -> "interrupted" within
                                                # seconds (signals.py); StopRun -> its status
        final = final_evaluation(...)           # best.pt on val and test
        write_figures(...); track_final(...)
        return write_results(...)               # outcome.py: results.json, same keys for every ending

Run directory (timm-style, one per run):
  config.yaml          the fully resolved config (what `--resume` and evaluate.py read back)
  model_summary.txt    torchinfo summary
  metrics.csv          one row per epoch
  checkpoints/         best.pt (by validation accuracy) and last.pt (end of the last epoch)
  results.json         val and test metrics of best.pt, skipped files, diagnostics, tracking keys, git
  confusion_matrix.png, learning_curves.png, top_losses.png (+ most_confused.png with more than 2 classes)
  comet/<key>.zip      the Comet offline archive (when there is no COMET_API_KEY)
  profile/             torch.profiler trace (with --profile)
  train.log
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchinfo

from petlab import rundir
from petlab.config import Config
from petlab.data.loaders import make_loader
from petlab.data.transforms import Preprocessing
from petlab.engine import crossval, distributed
from petlab.engine.batches import seed_everything
from petlab.engine.context import RunContext, open_run
from petlab.engine.features import feature_loaders
from petlab.engine.leaks import test_copies_in_train
from petlab.engine.metrics import HEADLINE, classification_metrics, mean_nll, nll
from petlab.engine.outcome import Interrupted, RunOutcome, StopRun, write_results
from petlab.engine.signals import StopFlag
from petlab.engine.speed import machine
from petlab.engine.trainer import Trainer
from petlab.errors import ConfigError
from petlab.models import build_model, head_parameters
from petlab.models.cam import overlaid_crops
from petlab.models.imagenet_head import head_init_report, match_imagenet
from petlab.names import model_name
from petlab.reports.figures import (
    plot_confusion_matrices,
    plot_cross_validation,
    plot_learning_curves,
    plot_photo_grid,
)
from petlab.tracking import git_state, installed_packages

log = logging.getLogger("petlab")


def run_experiment(cfg: Config | None = None, resume: Path | None = None, hooks=()) -> RunOutcome:
    """Train (or resume) one run. hooks (engine/hooks.py) join the training loop as they are; one that raises
    StopRun ends the run with that status (a sweep's pruning does so)."""
    with open_run(cfg, resume) as run:
        return train_run(run, hooks)


def train_run(run: RunContext, hooks=()) -> RunOutcome:
    """The run inside its signal handling: Ctrl-C or SIGTERM ends it within seconds wherever it is (training,
    validation, the final evaluation), with results.json saying "interrupted" and --resume continuing it."""
    so_far: dict = {}  # the trainer and the run's record, once they exist: what an interruption writes
    with StopFlag(immediate=not run.dist.enabled) as stop:
        try:
            return _train_run(run, stop, so_far, hooks)
        except Interrupted:
            return _interrupted(run, stop, so_far)


def _train_run(run: RunContext, stop: StopFlag, so_far: dict, hooks=()) -> RunOutcome:
    cfg = run.cfg
    model, facts = build_run_model(run)
    loaders = run_loaders(run, model)
    cv = cross_validation(run, model)
    trainer = Trainer(crossval.refit_config(cfg, cv) if cv else cfg, model, run.pre, loaders, run.run_dir,
                      run.splits.classes, device=run.device, tracker=run.tracker, features=run.features,
                      dist=run.dist, hooks=hooks)
    trainer.saver.class_photos = run.splits.class_photos()  # kept in each checkpoint, checked on resume
    record = run_record(run, facts, cv)
    so_far.update(trainer=trainer, record=record)
    last = rundir.checkpoint_path(run.run_dir, "last.pt")
    if run.resuming and last.is_file():
        trainer.resume(last)
    if cfg.model.head_init == "imagenet" and not trainer.state.initial and not trainer.state.history:
        trainer.state.initial = initial_metrics(trainer, loaders, run.splits.classes)
    try:
        if not trainer.state.finished:
            trainer.fit(cv["chosen"]["epochs"] if cv else None, stop)
    except StopRun as stop_run:
        log.info("stopped after epoch %d: %s", trainer.state.epoch, stop_run)
        with stop.deferred():
            return write_results(run, trainer, stop_run.status, reason=str(stop_run), extra=record)

    final, predictions = final_evaluation(run, trainer, loaders, cv)
    with stop.deferred():  # what is written from here on is written whole
        if run.is_main:
            write_predictions(run, predictions, cv)
            shown = (run.decoded[prediction_source(run, "val", cv)], *predictions["val"]) \
                if "val" in predictions else None
            figures, record["top_losses"] = write_figures(run, final, trainer.state.history, shown,
                                                          trainer.eval_model, cv)
            track_final(run, final, figures)
        outcome = write_results(run, trainer, "completed", final=final, extra=record)
    summary = ", ".join(f"{s} accuracy {m['accuracy']:.4f} (top-5 {m['top5_accuracy']:.4f})" for s, m in final.items())
    log.info("done in %.0fs: best epoch %d, %s -> %s", outcome.results.get("wall_time_s", 0),
             trainer.state.best_epoch, summary, run.run_dir)
    return outcome


def _interrupted(run: RunContext, stop: StopFlag, so_far: dict) -> RunOutcome:
    """results.json for a run a signal ended (its last.pt is what --resume continues from)."""
    trainer = so_far.get("trainer")
    with stop.deferred():
        if trainer is None:  # before training was set up: nothing to keep but config.yaml
            log.warning("interrupted before training started; continue with --resume %s", run.run_dir)
            run.tracker.end()
            return RunOutcome("interrupted", run.run_dir)
        done = trainer.state.epoch
        where = "training had finished; the final evaluation is left" if trainer.state.finished else (
            f"checkpoints/last.pt holds epoch {done}" if done else "no epoch had finished yet")
        log.warning("interrupted: %s; continue with --resume %s", where, run.run_dir)
        return write_results(run, trainer, "interrupted", extra=so_far["record"])


def model_summary(model, image_size: int, frozen: frozenset[int] = frozenset()):
    """torchinfo's ModelStatistics (str() is the table) of the model as it starts training: the parameters in
    `frozen` (ids) are counted as non-trainable, as training leaves them.

    torchinfo sums mult-adds and parameter bytes over leaf layers only, so a layer with weights of its own and
    a child (EfficientNet-Lite's Conv2dStaticSamePadding: a Conv2d holding its padding layer) is left out:
    Lite0 read 0.04 M mult-adds against torch.utils.flop_counter's 384 M. Such layers are added back here;
    tests/test_models.py checks the totals against flop_counter."""
    saved = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(saved[p] and id(p) not in frozen)
    try:  # eval mode: a train-mode forward would move BatchNorm statistics before training starts
        stats = torchinfo.summary(model, input_size=(1, 3, image_size, image_size), verbose=0, mode="eval",
                                  col_names=("output_size", "num_params", "mult_adds"), device="cpu")
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
    for layer in stats.summary_list:
        module = layer.module
        own = next(module.parameters(recurse=False), None) is not None
        if (not layer.is_leaf_layer and not layer.is_recursive and own
                and all(next(child.parameters(), None) is None for child in module.children())):
            stats.total_mult_adds += layer.macs
            stats.total_param_bytes += layer.param_bytes
    return stats


def run_tags(cfg: Config) -> list[str]:
    return [f"task:{cfg.task}", f"arch:{cfg.model.arch}", f"dataset:{cfg.data.dataset}", *cfg.tracking.tags]


def build_run_model(run: RunContext) -> tuple[torch.nn.Module, dict]:
    """The seeded model (ImageNet rows in its head with head_init imagenet), its summary, and -- on a fresh
    run -- everything the tracker should know before training. Returns the model and the facts that go
    into results.json."""
    cfg, classes = run.cfg, run.splits.classes
    head_init = imagenet_rows = None
    if cfg.model.head_init == "imagenet":
        matches = match_imagenet(classes, cfg.task)
        head_init = head_init_report(classes, matches, cfg.task)
        imagenet_rows = (classes, matches)
        log.info("head_init imagenet: %d of %d classes start from ImageNet's rows: %s", len(matches), len(classes),
                 head_init["rows"])
    seed_everything(cfg.seed)
    model, weights_report = build_model(cfg.model.arch, len(classes), cfg.model.pretrained, cfg.model.weights,
                                        cfg.model.dropout, imagenet_rows)
    head_ids = head_parameters(model, cfg.model.arch)
    frozen = frozenset(id(p) for p in model.parameters() if cfg.model.freeze_backbone and id(p) not in head_ids)
    summary = model_summary(model, run.pre.image_size, frozen)
    seed_everything(cfg.seed)  # the summary's forward pass must not shift what training draws
    trainable = sum(p.numel() for p in model.parameters() if id(p) not in frozen)
    git = git_state()
    if run.is_main:
        summary_path = run.run_dir / "model_summary.txt"
        if not summary_path.is_file():
            summary_path.write_text(f"{summary}\n")
        if not run.resuming:
            track_setup(run, summary, trainable, git)
    facts = {"params_total": summary.total_params, "params_trainable": trainable,
             "mult_adds": summary.total_mult_adds, "git": git, "head_init": head_init,
             "pretrained_weights": weights_report}
    return model, facts


def track_setup(run: RunContext, summary, trainable: int, git: dict) -> None:
    """Everything known before training: hyperparameters, data, model summary, provenance."""
    cfg, splits, tracker = run.cfg, run.splits, run.tracker
    params = {**cfg.flat(), **{f"preprocessing.{k}": v for k, v in run.pre.to_dict().items()},
              **{f"dataset.size.{k}": v for k, v in splits.sizes().items()},
              **{f"dataset.usable.{k}": len(d.labels) for k, d in run.decoded.items()},
              "dataset.classes": splits.classes, "dataset.num_classes": len(splits.classes)}
    tracker.log_parameters(params)
    tracker.add_tags(run_tags(cfg))
    tracker.log_text("model_summary", str(summary))
    tracker.log_others({"params_total": summary.total_params, "params_trainable": trainable,
                        "mult_adds": summary.total_mult_adds, "git_commit": git["commit"],
                        "git_dirty": git["dirty"], "dataset_root": splits.root})
    tracker.log_others({f"machine.{k}": v for k, v in machine(run.device).items()})
    tracker.log_others({f"package.{name}": version for name, version in sorted(installed_packages().items())})


def run_loaders(run: RunContext, model: torch.nn.Module) -> dict:
    """train/val/test loaders (sharded over torchrun's processes): augmented images for train, eval crops
    for val and test -- or, with a frozen backbone and no augmentation, cached backbone features, so the
    backbone runs once per image, ever."""
    cfg = run.cfg
    if run.features:
        log.info("frozen backbone without augmentation: training the head on cached backbone features")
        with run.dist.main_first():
            loaders = feature_loaders(cfg, model.to(run.device), run.decoded, run.pre, run.cache_dir, run.device)
    else:
        loaders = image_loaders(cfg, run.pre, run.decoded)
    return {split: distributed.shard(loader, run.dist, split == "train", cfg.seed) for split, loader in loaders.items()}


def image_loaders(cfg: Config, pre: Preprocessing, decoded: dict) -> dict:
    t, d = cfg.train, cfg.data
    return {
        "train": make_loader(decoded["train"], pre, True, t.batch_size, d.num_workers, torch.Generator(),
                             d.crop_scale_min, d.hflip, d.augment, d.policy, t.sampler),
        **{s: make_loader(decoded[s], pre, False, t.eval_batch(), d.num_workers)
           for s in ("val", "test") if s in decoded},
    }


def cross_validation(run: RunContext, model: torch.nn.Module) -> dict | None:
    """With train.cv_folds: the chosen lr and epoch count (crossval.py), computed once and kept for resume."""
    if not run.cfg.train.cv_folds:
        return None
    if run.dist.enabled:
        raise ConfigError("train.cv_folds runs in one process; start it without torchrun")
    cv = crossval.select_or_resume(run.cfg, run.run_dir, run.resuming, model, run.decoded["train"],
                                   run.splits.classes, run.pre, run.features, run.cache_dir, run.device)
    run.tracker.log_others({"cv_folds": cv["folds"], "cv_chosen_lr": cv["chosen"]["lr"],
                            "cv_chosen_epochs": cv["chosen"]["epochs"], "cv_accuracy": cv["chosen"]["accuracy"]})
    if run.dist.is_main:  # config.yaml says what the refit does (a resume recomputes the same from cv.json)
        chosen = cv["chosen"]
        note = (f"cross-validated ({cv['folds']} folds, cv.json): epoch 0 (no training) scored best, so the\n"
                "refit trains nothing and keeps the model as initialised (its ImageNet head rows)"
                if chosen["epochs"] == 0 else
                f"cross-validated ({cv['folds']} folds, cv.json): the refit on all of train uses the chosen\n"
                f"train.lr {chosen['lr']:g} and stops after epoch {chosen['epochs']} of the "
                f"{run.cfg.train.epochs}-epoch schedule the folds were scored with")
        rundir.write_config(run.run_dir, crossval.refit_config(run.cfg, cv), note)
    return cv


def run_record(run: RunContext, facts: dict, cv: dict | None) -> dict:
    """What results.json says about the run whatever its ending: the data, the model, the provenance."""
    cfg, splits = run.cfg, run.splits
    record = {"run_dir": str(run.run_dir), "task": cfg.task, "arch": cfg.model.arch, "dataset": splits.dataset,
              "dataset_root": splits.root, "classes": splits.classes, "split_sizes": splits.sizes(),
              "usable_sizes": {n: len(d.labels) for n, d in run.decoded.items()}, "split_notes": splits.notes,
              "eval_sample": {split: {"n": len(getattr(splits, split)), "of": whole}
                              for split, whole in splits.sampled_from.items()} or None,
              "classes_without_val": splits.classes_without_val,
              "excluded": {"findings": cfg.data.exclude, "kinds": cfg.data.exclude_kinds or "all",
                           "count": len(splits.excluded), "files": splits.excluded} if cfg.data.exclude else None,
              "skipped_files": {name: d.skipped_summary() for name, d in run.decoded.items()},
              "feature_cache": run.features, **facts, "tags": run_tags(cfg), "started_at": run.started_at,
              "world_size": run.dist.world_size, "machine": machine(run.device)}
    record["test_near_copies_in_train"] = near_copies_record(run)
    if cv:
        record["cross_validation"] = {k: v for k, v in cv.items() if k != "oof"}
        # epoch 0 won: best.pt is the model as initialised, and the refit trained nothing
        record["cross_validation"]["kept_initial_model"] = cv["chosen"]["epochs"] == 0
    return record


def near_copies_record(run: RunContext) -> dict | None:
    """How many test photos have a near-copy in train (None when data.leak_check is off); logged when not zero."""
    if not run.cfg.data.leak_check or not run.is_main:
        return None
    found = test_copies_in_train(run.splits, run.cache_dir, run.cfg.task)
    if found["count"]:
        log.warning("%d test photos have a near-copy in train: the test accuracy counts them (results.json "
                    "test_near_copies_in_train; experiments/audit.py lists them, --exclude leaves them out)",
                    found["count"])
    return found


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


def final_evaluation(run: RunContext, trainer: Trainer, loaders: dict, cv: dict | None) -> tuple[dict, dict]:
    """Metrics of best.pt (chosen by validation; test is only ever reported) on val and test, and the
    predictions behind them: split -> (targets, probabilities), in the decoded cache's order. With
    cross-validation, val is the out-of-fold prediction of every training photo under the chosen setting."""
    run.dist.barrier()  # rank 0 has written best.pt
    trainer.eval_model.load_state_dict(rundir.load_checkpoint(rundir.checkpoint_path(run.run_dir))["model"])
    classes, final, predictions = run.splits.classes, {}, {}
    if cv:
        labels, oof = run.decoded["train"].labels, cv["oof"]
        final["val"] = {**classification_metrics(labels, oof, mean_nll(oof, labels), classes),
                        "source": f"{cv['folds']}-fold cross-validation on train (out-of-fold)"}
        predictions["val"] = (labels, oof)
    with tempfile.TemporaryDirectory(prefix="petlab-eval-") as tmp:
        # best.pt's ONNX twin predicts val and test where ONNX Runtime is the faster (a CPU; README "Speed")
        fast = trainer.runtime_twin(Path(tmp))
        for split in ("val", "test"):
            if split in loaders:
                targets, probs, loss = trainer.predict(loaders[split], split, fast)
                final[split] = classification_metrics(targets, probs, loss, classes)
                predictions[split] = (targets, probs)
    if fast is not None:
        log.info("final evaluation on %s", fast.runtime)
    return final, predictions


def prediction_source(run: RunContext, split: str, cv: dict | None) -> str:
    """Which decoded split a split's predictions are of: out-of-fold validation predicts the training photos."""
    return "train" if cv and split == "val" else split


def write_predictions(run: RunContext, predictions: dict, cv: dict | None) -> Path:
    """predictions.npz: per split, every photo's file, true label and predicted probabilities. Promotion
    fits the temperature on them and pairs them with the production model's on the same photos."""
    splits = {}
    for split, (targets, probs) in predictions.items():
        source = prediction_source(run, split, cv)
        skipped = {s["path"] for s in run.decoded[source].skipped}
        files = [str(path) for path, _ in getattr(run.splits, source) if path not in skipped]
        splits[split] = (files[:len(targets)], targets, probs)  # --limit-batches evaluates the first batches only
    return rundir.write_predictions(run.run_dir, run.splits.classes, splits)


TOP_LOSSES = 16
CONFUSED_PAIRS, PHOTOS_PER_PAIR = 5, 4


def top_losses(targets: np.ndarray, probs: np.ndarray, k: int = TOP_LOSSES) -> list[tuple[int, float]]:
    """(index, loss) of the k photos with the highest loss (-log of the true class's probability), highest first."""
    losses = nll(probs, targets)
    order = np.argsort(-losses, kind="stable")[:k]
    return [(int(i), float(losses[i])) for i in order]


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself, under DistributedDataParallel (.module) or torch.compile (._orig_mod)."""
    for attribute in ("module", "_orig_mod"):
        model = getattr(model, attribute, model)
    return model


def write_figures(run: RunContext, final: dict, history: list[dict], shown: tuple, model: torch.nn.Module,
                  cv: dict | None = None) -> tuple[dict[str, Path], list[dict]]:
    """confusion_matrix.png, learning_curves.png, top_losses.png (the validation photos with the highest loss)
    and, with more than two classes, most_confused.png (the photos behind the most-confused pairs).
    shown: (decoded images, targets, probabilities) of the validation photos, in the cache's order (val is
    not shuffled); out-of-fold training photos with cross-validation. Returns the figures and the top losses."""
    cfg, pre, classes, run_dir = run.cfg, run.pre, run.splits.classes, run.run_dir
    figures = {"confusion_matrix": run_dir / "confusion_matrix.png",
               "learning_curves": run_dir / "learning_curves.png",
               "top_losses": run_dir / "top_losses.png"}
    plot_confusion_matrices(final, classes, figures["confusion_matrix"])
    plot_learning_curves({cfg.name: history}, figures["learning_curves"], f"{cfg.model.arch} on {cfg.data.dataset}")
    images, targets, probs = shown
    preds = probs.argmax(1)
    margin = (pre.resize_size - pre.image_size) // 2

    def crop(i: int) -> np.ndarray:
        return images.array[i][margin:margin + pre.image_size, margin:margin + pre.image_size]

    which = "out-of-fold training" if cv else "validation"
    top = top_losses(targets, probs)
    crops = [crop(i) for i, _ in top]
    try:  # where the model looked for what it answered (models/cam.py); a figure is never worth failing a run
        shown_crops = overlaid_crops(unwrapped(model), cfg.model.arch, crops, [int(preds[i]) for i, _ in top], pre)
        looked = ", overlaid with where the model looked for its answer"
    except Exception as exc:  # noqa: BLE001
        log.warning("top_losses.png without heatmaps: %s: %s", type(exc).__name__, exc)
        shown_crops, looked = crops, ""
    plot_photo_grid(shown_crops,
                    [f"true: {classes[targets[i]]}\npredicted: {classes[preds[i]]} ({probs[i, preds[i]]:.0%})"
                     f"\nloss {loss:.2f}" for i, loss in top], figures["top_losses"],
                    f"the {len(top)} {which} photos with the highest loss{looked}",
                    wrong=[targets[i] != preds[i] for i, _ in top])
    if len(classes) > 2:
        pairs = final["val"]["most_confused"][:CONFUSED_PAIRS]
        picked = [(i, pair) for pair in pairs
                  for i in np.flatnonzero((targets == classes.index(pair["true"]))
                                          & (preds == classes.index(pair["predicted"])))[:PHOTOS_PER_PAIR]]
        figures["most_confused"] = run_dir / "most_confused.png"
        plot_photo_grid([crop(i) for i, _ in picked], [f"{p['true']}\nseen as {p['predicted']}" for _, p in picked],
                        figures["most_confused"], f"{which} photos behind the most-confused pairs",
                        cols=PHOTOS_PER_PAIR)
    if cv:
        figures["cross_validation"] = run_dir / "cross_validation.png"
        plot_cross_validation(cv, figures["cross_validation"])
    shown_losses = [{"index": i, "true": classes[targets[i]], "predicted": classes[preds[i]],
                     "probability": float(probs[i, preds[i]]), "loss": loss} for i, loss in top]
    return figures, shown_losses


def track_final(run: RunContext, final: dict, figures: dict[str, Path]) -> None:
    """Final metrics, per-class scores, figures and the best checkpoint (write_results ends the experiment)."""
    tracker, classes = run.tracker, run.splits.classes
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
    if run.cfg.tracking.log_model:
        tracker.log_model(model_name(run.cfg.task), rundir.checkpoint_path(run.run_dir))


"""Command-line flags shared by the experiment scripts, mapped onto dotted config keys."""

from __future__ import annotations

import argparse

# flag -> (config key, argparse kwargs). Flags left unset do not override the config.
RUN_FLAGS = {
    "--task": ("task", {}),
    "--dataset": ("data.dataset", {}),
    "--data-dir": ("data.data_dir", {}),
    "--species": ("data.species", {}),
    "--image-size": ("data.image_size", {"type": int}),
    "--num-workers": ("data.num_workers", {"type": int}),
    "--no-augment": ("data.augment", {"action": "store_const", "const": "false",
                                      "help": "train on eval crops (frozen backbone: cached features)"}),
    "--augment-policy": ("data.policy", {"choices": ["none", "trivial"]}),
    "--dropout": ("model.dropout", {"type": float}),
    "--val-fraction": ("data.val_fraction", {"type": float}),
    "--arch": ("model.arch", {}),
    "--pretrained": ("model.pretrained", {"action": "store_true"}),
    "--weights": ("model.weights", {"help": "local ImageNet state dict for the backbone"}),
    "--freeze-backbone": ("model.freeze_backbone", {"action": "store_true"}),
    "--unfreeze-at": ("model.unfreeze_at", {"type": int}),
    "--freeze-batchnorm": ("model.freeze_batchnorm", {"action": "store_true",
                                                      "help": "keep pretrained BatchNorm statistics"}),
    "--head-init": ("model.head_init", {"choices": ["fresh", "imagenet"],
                                        "help": "imagenet: classes that are ImageNet categories start from its rows"}),
    "--feature-flips": ("data.feature_flips", {"action": "store_true",
                                               "help": "feature cache: train on each photo and its mirror"}),
    "--tta": ("train.tta", {"choices": ["none", "flip"], "help": "test-time augmentation of val/test"}),
    "--cv-folds": ("train.cv_folds", {"type": int,
                                      "help": "choose lr and epochs by K-fold cross-validation on train, then refit"}),
    "--cv-lrs": ("train.cv_lrs", {"type": float, "nargs": "+", "help": "candidate learning rates for --cv-folds"}),
    "--epochs": ("train.epochs", {"type": int}),
    "--batch-size": ("train.batch_size", {"type": int}),
    "--lr": ("train.lr", {"type": float}),
    "--optimizer": ("train.optimizer", {}),
    "--weight-decay": ("train.weight_decay", {"type": float}),
    "--scheduler": ("train.scheduler", {}),
    "--label-smoothing": ("train.label_smoothing", {"type": float}),
    "--early-stopping-patience": ("train.early_stopping_patience", {"type": int}),
    "--precision": ("train.precision", {"choices": ["auto", "fp32", "bf16"]}),
    "--channels-last": ("train.channels_last", {"nargs": "?", "const": "true", "choices": ["true", "false"]}),
    "--limit-batches": ("train.limit_batches", {"type": int, "help": "at most N batches per split per epoch"}),
    "--threads": ("train.threads", {"type": int}),
    "--device": ("train.device", {}),
    "--tracking": ("tracking.backend", {"choices": ["comet", "none"]}),
    "--tag": ("tracking.tags", {"action": "append", "help": "extra Comet tag (repeatable)"}),
    "--profile": ("diagnostics.profile", {"action": "store_true", "help": "torch.profiler trace of a few steps"}),
    "--seed": ("seed", {"type": int}),
    "--output-dir": ("output_dir", {}),
}


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    for flag, (key, kwargs) in RUN_FLAGS.items():
        parser.add_argument(flag, dest=key, default=None, **kwargs)
    parser.add_argument("--config", help="experiment YAML (experiments/configs/*.yaml); flags override it")


def overrides_from(args: argparse.Namespace) -> dict:
    values = vars(args)
    return {key: values[key] for key, _ in RUN_FLAGS.values() if values.get(key) not in (None, False)}

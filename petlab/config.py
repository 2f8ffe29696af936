"""Experiment configuration: plain nested data with defaults, YAML files and CLI overrides.

The resolved config is what gets snapshotted into every run directory and checkpoint, so
it must round-trip through YAML unchanged (only str/int/float/bool/None/lists in it).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TASKS = ("cats_vs_dogs", "breeds")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
TRACKERS = ("comet", "none")
AUGMENT_POLICIES = ("none", "trivial")
HEAD_INITS = ("fresh", "imagenet")
TTA_MODES = ("none", "flip")


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key and what is allowed."""


@dataclass
class DataConfig:
    dataset: str | None = None  # a name from DATASETS; None: the layout under data_dir, else the task's default
    data_dir: str | None = None  # points at one dataset directly (else <data root>/<dataset>)
    species: str | None = None  # oxford_iiit_pet only: "cat" or "dog" keeps one species
    val_fraction: float = 0.2  # carved from train (stratified, seeded) when no official val split
    image_size: int | None = None  # None: the architecture's default input size
    resize_ratio: float = 1.14  # eval resizes the short side to image_size * ratio, then centre-crops
    crop_scale_min: float = 0.35  # RandomResizedCrop's lower area bound (train only)
    hflip: bool = True
    policy: str = "none"  # extra per-image augmentation after crop + flip: none, or trivial (TrivialAugmentWide)
    augment: bool = True  # false: train on the eval crop (with a frozen backbone, enables the feature cache)
    # Feature cache only: also cache each training image's mirror image and train on both (twice the examples).
    feature_flips: bool = False
    num_workers: int = 0  # images are decoded once into a cache, so workers rarely pay off
    cache_dir: str | None = None  # None: $PETLAB_CACHE_DIR or data/cache


@dataclass
class ModelConfig:
    arch: str = "custom_cnn"
    pretrained: bool = False  # torchvision weights API (needs a download or a filled TORCH_HOME)
    weights: str | None = None  # a local ImageNet state dict for the backbone (wins over pretrained)
    freeze_backbone: bool = False
    unfreeze_at: int | None = None  # epoch (0-based) at which the backbone starts training
    # Keep the pretrained BatchNorm statistics when fine-tuning: small batches of a small dataset
    # would otherwise replace ImageNet's statistics with noisy ones (the affine weights still train).
    freeze_batchnorm: bool = False
    backbone_lr_scale: float = 0.1  # backbone lr = lr * scale once unfrozen
    dropout: float = 0.0  # extra dropout before the new head (on top of any the backbone has)
    # imagenet: rows of classes that are ImageNet categories start from the pretrained classifier's rows
    # (models/imagenet_head.py); fresh: a new random head.
    head_init: str = "fresh"


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    scheduler: str = "none"
    warmup_epochs: float = 0.0  # onecycle: fraction of the run is derived from this
    label_smoothing: float = 0.0
    early_stopping_patience: int | None = None  # epochs without val improvement; None: off
    precision: str = "auto"  # auto: the architecture's measured setting for the device (engine/speed.py)
    channels_last: bool | None = None  # None: likewise
    limit_batches: int | None = None  # at most N batches per split per epoch (smoke runs)
    eval_batch_size: int | None = None  # None: 2 x batch_size
    threads: int | None = None  # torch intra-op threads; None: torch's default
    device: str = "auto"
    # Test-time augmentation for val/test predictions: flip averages the softmax of the image and its mirror.
    tta: str = "none"
    # Few photos per class: choose lr (from cv_lrs) and the epoch count by k-fold cross-validation on
    # train, then refit on all of train. No validation split is carved; results' "val" is the
    # out-of-fold estimate of the chosen setting. None: the usual carved (or shipped) validation split.
    cv_folds: int | None = None
    cv_lrs: list[float] = field(default_factory=list)  # empty: [lr]

    def eval_batch(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size


@dataclass
class TrackingConfig:
    backend: str = "comet"  # comet: online with COMET_API_KEY, else offline archive in the run dir; none: off
    project: str = "petlab"  # COMET_PROJECT_NAME wins
    workspace: str | None = None  # COMET_WORKSPACE wins
    tags: list[str] = field(default_factory=list)  # added to task/arch/dataset tags (sweeps add study/trial)
    log_every_steps: int = 1  # per-step metrics (train loss, lr, gradient norm)
    log_model: bool = True  # upload best.pt as a Comet model asset
    online_timeout_s: float = 5.0  # how long to wait for the Comet server before going offline


@dataclass
class DiagnosticsConfig:
    """Thresholds of the training rules (warnings in the log, events in Comet, entries in results.json)."""

    enabled: bool = True
    check_every_steps: int = 10  # per-layer gradient checks (they cost one pass over the gradients)
    vanishing_grad_ratio: float = 1e-5  # a weight's mean |gradient| / the largest layer's, below: vanishing
    exploding_grad: float = 1e3  # total gradient norm above this (or not finite) is exploding
    loss_patience: int = 3  # epochs without train loss improving by loss_min_delta -> loss not decreasing
    loss_min_delta: float = 0.01  # relative improvement that counts
    overfit_patience: int = 2  # epochs of rising val loss while the train/val accuracy gap grows
    init_loss_factor: float = 3.0  # first-batch loss above factor * ln(classes) is poor initialisation
    dead_fraction: float = 0.5  # share of a ReLU layer's channels that never fire on the first batch
    data_wait_fraction: float = 0.5  # share of training time spent waiting for data -> loader bottleneck
    profile: bool = False  # write a torch.profiler trace of a few steps (--profile)
    profile_steps: int = 5


@dataclass
class Config:
    name: str = "default"
    task: str = "cats_vs_dogs"
    seed: int = 42
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """{"train.lr": 0.001, ...}: the shape trackers and sweeps want."""
        return dict(_flatten(self.to_dict()))


def _flatten(d: dict, prefix: str = ""):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or fail naming the key."""
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{key}: must not be null")
    for kind in allowed:
        if kind is type(None):
            continue
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            continue
        if kind is int and isinstance(value, bool):
            continue
        try:
            if kind is int and isinstance(value, float) and not value.is_integer():
                continue
            return kind(value)
        except (TypeError, ValueError):
            continue
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise ConfigError(f"{key}: expected {names}, got {value!r}")


def _update(section: Any, updates: dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(section))
    fields = {f.name for f in dataclasses.fields(section)}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key {full!r}; known keys: {', '.join(sorted(fields))}")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping, got {value!r}")
            _update(current, value, f"{full}.")
        else:
            setattr(section, key, _coerce(full, value, hints[key]))


def dotted_to_nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """{"train.lr": 0.1} -> {"train": {"lr": 0.1}}: the inverse of Config.flat()."""
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then dotted overrides such as {"train.lr": 0.01}."""
    cfg = Config()
    if path is not None:
        _update(cfg, read_yaml(path))
    if overrides:
        _update(cfg, dotted_to_nested(overrides))
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    _update(cfg, data)
    validate(cfg)
    return cfg


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")


def validate(cfg: Config) -> None:
    from petlab.data.datasets import DATASETS
    from petlab.models import ARCHS

    _choice("task", cfg.task, TASKS)
    if cfg.data.dataset is not None:
        _choice("data.dataset", cfg.data.dataset, tuple(DATASETS))
    _choice("model.arch", cfg.model.arch, tuple(ARCHS))
    _choice("train.optimizer", cfg.train.optimizer, OPTIMIZERS)
    _choice("train.scheduler", cfg.train.scheduler, SCHEDULERS)
    _choice("train.precision", cfg.train.precision, PRECISIONS)
    _choice("train.device", cfg.train.device, DEVICES)
    _choice("tracking.backend", cfg.tracking.backend, TRACKERS)
    _choice("data.policy", cfg.data.policy, AUGMENT_POLICIES)
    _choice("model.head_init", cfg.model.head_init, HEAD_INITS)
    _choice("train.tta", cfg.train.tta, TTA_MODES)
    if cfg.model.head_init == "imagenet" and not (cfg.model.pretrained or cfg.model.weights):
        raise ConfigError("model.head_init: 'imagenet' copies rows of the pretrained ImageNet classifier; "
                          "it needs model.pretrained or model.weights")
    if cfg.train.cv_folds is not None and cfg.train.cv_folds < 2:
        raise ConfigError(f"train.cv_folds: needs at least 2 folds, got {cfg.train.cv_folds}")
    if any(lr <= 0 for lr in cfg.train.cv_lrs):
        raise ConfigError(f"train.cv_lrs: every candidate must be positive, got {cfg.train.cv_lrs}")
    if cfg.data.species is not None:
        _choice("data.species", cfg.data.species, ("cat", "dog"))
    positive = {
        "train.epochs": cfg.train.epochs,
        "train.batch_size": cfg.train.batch_size,
        "train.limit_batches": cfg.train.limit_batches,
        "train.early_stopping_patience": cfg.train.early_stopping_patience,
        "data.image_size": cfg.data.image_size,
        "train.eval_batch_size": cfg.train.eval_batch_size,
        "train.threads": cfg.train.threads,
        "tracking.log_every_steps": cfg.tracking.log_every_steps,
        "tracking.online_timeout_s": cfg.tracking.online_timeout_s,
        "diagnostics.check_every_steps": cfg.diagnostics.check_every_steps,
        "diagnostics.profile_steps": cfg.diagnostics.profile_steps,
    }
    for key, value in positive.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value}")
    if cfg.train.lr < 0:
        raise ConfigError(f"train.lr: must be >= 0, got {cfg.train.lr}")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: must be in (0, 1), got {cfg.data.val_fraction}")
    if not 0.0 < cfg.data.crop_scale_min <= 1.0:
        raise ConfigError(f"data.crop_scale_min: must be in (0, 1], got {cfg.data.crop_scale_min}")
    if cfg.data.resize_ratio < 1.0:
        raise ConfigError(f"data.resize_ratio: must be >= 1, got {cfg.data.resize_ratio}")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers: must be >= 0, got {cfg.data.num_workers}")
    if cfg.model.unfreeze_at is not None and cfg.model.unfreeze_at < 0:
        raise ConfigError(f"model.unfreeze_at: must be >= 0, got {cfg.model.unfreeze_at}")
    ARCHS[cfg.model.arch].check_image_size(cfg.data.image_size)

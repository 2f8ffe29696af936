"""Experiment configuration: plain nested data with defaults, YAML files and CLI overrides.

The resolved config is what gets snapshotted into every run directory and checkpoint, so
it must round-trip through YAML unchanged (only str/int/float/bool/None/lists in it).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from petlab.errors import ConfigError
from petlab.monitor import DEFAULT as DEFAULT_MONITOR
from petlab.monitor import metric_names
from petlab.names import AUDIT_KINDS, SPECIES

TASKS = ("cats_vs_dogs", "breeds")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
TRACKERS = ("comet", "none")
AUGMENT_POLICIES = ("none", "trivial")
HEAD_INITS = ("fresh", "imagenet")
TTA_MODES = ("none", "flip")
CLASS_WEIGHTS = ("none", "balanced")
SAMPLERS = ("shuffle", "balanced")


def _archs() -> tuple[str, ...]:
    from petlab.models import ARCHS  # the zoo imports torch; only validation and flags need its names

    return tuple(ARCHS)


def _datasets() -> tuple[str, ...]:
    from petlab.data.datasets import DATASETS

    return tuple(DATASETS)


_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | float) -> float:
    """'90s', '10m', '1.5h' or plain seconds -> seconds (train.time_budget, --time-budget)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration such as 90s, 10m or 2h")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _is_duration(value: str) -> bool:
    try:
        return parse_duration(value) > 0
    except ValueError:
        return False


# Checks a value must pass (None always passes where the type allows it): (test, what it means).
POSITIVE = (lambda v: v > 0, "must be positive")
NON_NEGATIVE = (lambda v: v >= 0, "must be >= 0")


def setting(default: Any = None, *, factory: Any = None, choices: tuple | Any = None, check: tuple | None = None,
            flag: str | bool = False, help: str | None = None, **argparse_kwargs: Any):
    """A config field that carries its own rules and command-line flag.

    choices: allowed values (or a function returning them, for registries that import torch);
    check: (test, message) for each value (each element of a list); flag: True for `--field-name`,
    a string for another name; help: what the flag does (the comment a reader needs anyway)."""
    metadata = {"choices": choices, "check": check, "flag": flag, "help": help, "argparse": argparse_kwargs}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class _Section:
    """A config section that becomes read-only once the run has resolved it (Config.freeze)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError(f"the run's config is resolved and read-only ({type(self).__name__}.{name}); "
                                 "make a changed copy with Config.updated({...})")
        object.__setattr__(self, name, value)


@dataclass
class DataConfig(_Section):
    dataset: str | None = setting(None, choices=_datasets, flag=True,
                                  help="a named dataset; default: the layout under --data-dir, else the task's")
    data_dir: str | None = setting(None, flag=True, help="one dataset's folder (else <data root>/<dataset>)")
    labels_csv: str | None = setting(None, flag=True,
                                     help="a CSV of file,label rows (an optional split column: train, val, test), "
                                          "files relative to it; test and val are carved when it has no split")
    species: str | None = setting(None, choices=SPECIES, flag=True, help="oxford_iiit_pet: keep one species")
    val_fraction: float = setting(0.2, check=(lambda v: 0 < v < 1, "must be in (0, 1)"), flag=True,
                                  help="carved from train (stratified, seeded) when there is no official val split")
    eval_sample: int | None = setting(None, check=POSITIVE, flag=True,
                                      help="validate and test on a stratified, seeded sample of at most N photos "
                                           "per split (results state it, with each accuracy's 95%% interval)")
    image_size: int | None = setting(None, check=POSITIVE, flag=True, help="default: the architecture's input size")
    resize_ratio: float = setting(1.14, check=(lambda v: v >= 1, "must be >= 1"),
                                  help="eval resizes the short side to image_size * ratio, then centre-crops")
    crop_scale_min: float = setting(0.35, check=(lambda v: 0 < v <= 1, "must be in (0, 1]"),
                                    help="RandomResizedCrop's lower area bound (train only)")
    hflip: bool = True
    policy: str = setting("none", choices=AUGMENT_POLICIES, flag="--augment-policy",
                          help="extra augmentation after crop + flip: none, or trivial (TrivialAugmentWide)")
    augment: bool = setting(True, flag=True,
                            help="--no-augment: train on the eval crop (a frozen backbone then caches its features)")
    mixup: float = setting(0.0, check=NON_NEGATIVE, flag=True,
                           help="MixUp's alpha (torchvision.transforms.v2.MixUp on each training batch); 0: off")
    cutmix: float = setting(0.0, check=NON_NEGATIVE, flag=True,
                            help="CutMix's alpha (v2.CutMix); with --mixup too, each batch gets one of the two")
    feature_flips: bool = setting(False, flag=True,
                                  help="feature cache: also cache each training photo's mirror and train on both")
    num_workers: int = setting(0, check=NON_NEGATIVE, flag=True,
                               help="loader processes (images are decoded once into a cache, so rarely worth it)")
    cache_dir: str | None = setting(None, help="default: $PETLAB_CACHE_DIR or data/cache (paths.py)")
    leak_check: bool = setting(True, flag=True, help="count the test photos with a near-copy in train (results.json, "
                                                       "the card); --no-leak-check skips its Lite0 pass")
    exclude: str | None = setting(None, flag=True, help="an audit's findings.csv (experiments/audit.py): train, "
                                                        "validate and test without the photos it lists")
    exclude_kinds: list[str] = setting(
        factory=list, flag=True, check=(lambda v: v in AUDIT_KINDS, f"must be one of {', '.join(AUDIT_KINDS)}"),
        help="only these kinds of findings (default: all), e.g. --exclude-kinds label_error leak")


@dataclass
class ModelConfig(_Section):
    arch: str = setting("custom_cnn", choices=_archs, flag=True)
    pretrained: bool = setting(False, flag=True, help="ImageNet weights (bundled, or torchvision's download)")
    weights: str | None = setting(None, flag=True, help="a local ImageNet state dict for the backbone")
    freeze_backbone: bool = setting(False, flag=True)
    unfreeze_at: int | None = setting(None, check=NON_NEGATIVE, flag=True,
                                      help="epoch (0-based) at which the backbone starts training")
    # Keep the pretrained BatchNorm statistics when fine-tuning: small batches of a small dataset
    # would otherwise replace ImageNet's statistics with noisy ones (the affine weights still train).
    freeze_batchnorm: bool = setting(False, flag=True, help="keep the pretrained BatchNorm statistics")
    backbone_lr_scale: float = setting(0.1, check=NON_NEGATIVE, help="backbone lr = lr * scale once unfrozen")
    dropout: float = setting(0.0, check=(lambda v: 0 <= v < 1, "must be in [0, 1)"), flag=True,
                             help="extra dropout before the new head")
    # imagenet: rows of classes that are ImageNet categories start from the pretrained classifier's rows
    # (models/imagenet_head.py); fresh: a new random head.
    head_init: str = setting("fresh", choices=HEAD_INITS, flag=True,
                             help="imagenet: classes that are ImageNet categories start from its rows")


@dataclass
class TrainConfig(_Section):
    epochs: int = setting(20, check=POSITIVE, flag=True)
    batch_size: int = setting(32, check=POSITIVE, flag=True)
    lr: float = setting(1e-4, check=NON_NEGATIVE, flag=True)
    optimizer: str = setting("adam", choices=OPTIMIZERS, flag=True)
    weight_decay: float = setting(0.0, check=NON_NEGATIVE, flag=True)
    momentum: float = setting(0.9, check=(lambda v: 0 <= v < 1, "must be in [0, 1)"), help="sgd only")
    scheduler: str = setting("none", choices=SCHEDULERS, flag=True)
    warmup_epochs: float = setting(0.0, check=NON_NEGATIVE, flag=True,
                                   help="linear warm-up from lr/100 over this many epochs (fractions too) for any "
                                        "schedule; onecycle's own warm-up share (default 0.3 of the run) otherwise")
    clip_grad: float | None = setting(None, check=POSITIVE, flag=True,
                                      help="clip the gradients' total norm to this (torch.nn.utils.clip_grad_norm_)")
    accumulate: int = setting(1, check=POSITIVE, flag=True,
                              help="one optimizer step per N batches: an N x larger effective batch; the schedule "
                                   "counts optimizer steps")
    ema: float | None = setting(None, check=(lambda v: 0 < v < 1, "must be in (0, 1)"), flag=True,
                                help="keep an exponential moving average of the weights with this decay "
                                     "(torch.optim.swa_utils.AveragedModel); it is what is evaluated, kept and shipped")
    label_smoothing: float = setting(0.0, check=(lambda v: 0 <= v < 1, "must be in [0, 1)"), flag=True)
    # Class imbalance (engine/imbalance.py; README "Class imbalance" measures both)
    class_weights: str = setting("none", choices=CLASS_WEIGHTS, flag=True,
                                 help="balanced: weight each class's loss by n / (classes x its count) "
                                      "(sklearn's compute_class_weight); a no-op on balanced data")
    sampler: str = setting("shuffle", choices=SAMPLERS, flag=True,
                           help="balanced: draw training photos with replacement, each class equally often "
                                "(torch.utils.data.WeightedRandomSampler)")
    early_stopping_patience: int | None = setting(None, check=POSITIVE, flag=True,
                                                  help="epochs without improvement of train.monitor; default off")
    monitor: str = setting(DEFAULT_MONITOR, choices=metric_names, flag=True,
                           help="the validation metric that decides what is best: best.pt, early stopping, a "
                                "sweep's objective and promotion follow it (petlab/monitor.py)")
    precision: str = setting("auto", choices=PRECISIONS, flag=True,
                             help="auto: the architecture's measured setting for the device (engine/speed.py); "
                                  "fp16 adds a gradient scaler (meant for CUDA)")
    channels_last: bool | None = setting(None, flag=True, help="default: the architecture's measured setting")
    limit_batches: int | None = setting(None, check=POSITIVE, flag=True,
                                        help="at most N batches per split per epoch (smoke runs)")
    eval_batch_size: int | None = setting(None, check=POSITIVE, help="default: 2 x batch_size")
    threads: int | None = setting(None, check=POSITIVE, flag=True, help="torch intra-op threads")
    device: str = setting("auto", choices=DEVICES, flag=True)
    compile: bool = setting(False, flag=True, help="torch.compile the training forward (measured slower on this "
                                                    "project's CPUs; its compile time is reported apart)")
    # Budgeted training: stop at this much training time ("90s", "10m", "2h"); schedules anneal to the
    # deadline, and train.epochs is not used (engine/budget.py).
    time_budget: str | None = setting(None, check=(_is_duration, "must be a duration such as 90s, 10m or 2h"),
                                      flag=True, help="train for this long (90s, 10m, 2h); the schedule anneals "
                                                      "to the deadline")
    tta: str = setting("none", choices=TTA_MODES, flag=True,
                       help="test-time augmentation of val/test: flip averages the image's and its mirror's softmax")
    # Few photos per class: choose lr (from cv_lrs) and the epoch count by k-fold cross-validation on
    # train, then refit on all of train. No validation split is carved; results' "val" is the
    # out-of-fold estimate of the chosen setting. None: the usual carved (or shipped) validation split.
    cv_folds: int | None = setting(None, check=(lambda v: v >= 2, "needs at least 2 folds"), flag=True,
                                   help="choose lr and epochs by K-fold cross-validation on train, then refit")
    cv_lrs: list[float] = setting(factory=list, check=(lambda v: v > 0, "every candidate must be positive"),
                                  flag=True, help="candidate learning rates for --cv-folds (default: [lr])")

    def eval_batch(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size


@dataclass
class TrackingConfig(_Section):
    backend: str = setting("comet", choices=TRACKERS, flag="--tracking",
                           help="comet: online with COMET_API_KEY, else an offline archive in the run; none: off")
    project: str = "petlab"  # COMET_PROJECT_NAME wins
    workspace: str | None = None  # COMET_WORKSPACE wins
    tags: list[str] = setting(factory=list, flag="--tag", action="append",
                              help="extra Comet tag (repeatable); sweeps add study/trial")
    log_every_steps: int = setting(1, check=POSITIVE, help="per-step metrics (train loss, lr, gradient norm)")
    log_model: bool = True  # upload best.pt as a Comet model asset
    online_timeout_s: float = setting(5.0, check=POSITIVE, help="how long to wait for Comet before going offline")


@dataclass
class DiagnosticsConfig(_Section):
    """Thresholds of the training rules (warnings in the log, events in Comet, entries in results.json)."""

    enabled: bool = True
    check_every_steps: int = setting(10, check=POSITIVE, help="per-layer gradient checks (a pass over the gradients)")
    vanishing_grad_ratio: float = 1e-5  # a weight's mean |gradient| / the largest layer's, below: vanishing
    exploding_grad: float = 1e3  # total gradient norm above this (or not finite) is exploding
    loss_patience: int = 3  # epochs without train loss improving by loss_min_delta -> loss not decreasing
    loss_min_delta: float = 0.01  # relative improvement that counts
    overfit_patience: int = 2  # epochs of rising val loss while the train/val accuracy gap grows
    init_loss_factor: float = 3.0  # first-batch loss above factor * ln(classes) is poor initialisation
    dead_fraction: float = 0.5  # share of a ReLU layer's channels that never fire on the first batch
    data_wait_fraction: float = 0.5  # share of training time spent waiting for data -> loader bottleneck
    profile: bool = setting(False, flag=True, help="a torch.profiler trace of a few steps")
    profile_steps: int = setting(5, check=POSITIVE)


@dataclass
class Config(_Section):
    name: str = "default"
    task: str = setting("cats_vs_dogs", choices=TASKS, flag=True)
    seed: int = setting(42, flag=True)
    output_dir: str = setting("runs", flag=True, help="run directories go here (relative: to the project root)")
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

    def updated(self, overrides: dict[str, Any]) -> Config:
        """A validated copy with dotted overrides applied ({"train.lr": 0.1}); read-only if this one is."""
        copy = config_from_dict(self.to_dict())
        _update(copy, dotted_to_nested(overrides))
        validate(copy)
        return copy.freeze() if self.frozen else copy

    @property
    def frozen(self) -> bool:
        return bool(self.__dict__.get("_frozen"))

    def freeze(self) -> Config:
        """Make this config read-only (the run resolved it once; everything after only reads it)."""
        for section in (self.data, self.model, self.train, self.tracking, self.diagnostics, self):
            object.__setattr__(section, "_frozen", True)
        return self


def config_fields(section: Any = Config, prefix: str = ""):
    """(dotted key, dataclass field, type hint) of every leaf setting, in declaration order."""
    hints = typing.get_type_hints(section)
    for f in dataclasses.fields(section):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from config_fields(hint, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hint


def allowed_values(f: dataclasses.Field) -> tuple | None:
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def _flatten(d: dict, prefix: str = ""):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or fail naming the key. Strict where a
    silent conversion would change the meaning: a string is never split into a list of characters, a
    boolean is never a number, and a number is finite."""
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{key}: must not be null")
    for kind in allowed:
        if kind is type(None):
            continue
        if typing.get_origin(kind) is list:
            if not isinstance(value, (list, tuple)):
                continue  # `tags: baseline` is not ['b', 'a', 's', ...]: it needs `tags: [baseline]`
            (element,) = typing.get_args(kind)
            return [_coerce(f"{key}[{i}]", v, element) for i, v in enumerate(value)]
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            continue
        if isinstance(value, bool) or isinstance(value, (list, dict)):
            continue  # `lr: true` is not 1.0
        try:
            if kind is int and isinstance(value, float) and not value.is_integer():
                continue
            converted = kind(value)
        except (TypeError, ValueError):
            continue
        if isinstance(converted, float) and not math.isfinite(converted):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return converted
    if isinstance(value, str) and any(typing.get_origin(k) is list for k in allowed):
        raise ConfigError(f"{key}: expected a list, got the string {value!r}; write [{value}]")
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


MAX_VALUE_CHARS = 1000


def parse_value(text: str) -> Any:
    """A value typed on the command line, read as YAML, except that 1e-3 is a number (YAML 1.1 wants 1.0e-3);
    the field's own type is checked later (_coerce). Over MAX_VALUE_CHARS characters is refused unread: a
    5,000-digit number once raised ValueError (Python's int digit limit), 5,000 [ a RecursionError."""
    if len(text) > MAX_VALUE_CHARS:
        raise ConfigError(f"a value of {len(text)} characters is over the {MAX_VALUE_CHARS} allowed")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{text!r} is not valid YAML ({str(exc).splitlines()[0]})") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{text[:40]!r}...: not a value ({type(exc).__name__})") from None
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            return value
    if isinstance(value, list):
        return [parse_value(str(v)) if isinstance(v, str) else v for v in value]
    return value


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


def validate(cfg: Config) -> None:
    """Every field's own rules (choices, checks), then the few rules that span fields."""
    flat = cfg.flat()
    for key, f, _ in config_fields():
        value = flat[key]
        allowed = allowed_values(f)
        if allowed is not None and value is not None and value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")
        check = f.metadata.get("check")
        if check is not None and value is not None:
            test, message = check
            if not all(test(v) for v in (value if isinstance(value, list) else [value])):
                raise ConfigError(f"{key}: {message}, got {value}")
    if cfg.train.warmup_epochs >= cfg.train.epochs and not cfg.train.time_budget:
        raise ConfigError(f"train.warmup_epochs: {cfg.train.warmup_epochs} must be fewer than train.epochs "
                          f"({cfg.train.epochs})")
    if (cfg.data.mixup or cfg.data.cutmix) and not cfg.data.augment:
        raise ConfigError("data.mixup / data.cutmix: mixing is training augmentation; it needs data.augment "
                          "(and so no feature cache)")
    if cfg.train.class_weights == "balanced" and cfg.train.sampler == "balanced":
        raise ConfigError("train.class_weights and train.sampler: each balances the classes on its own; together "
                          "they correct twice (minority classes then outweigh the rest); choose one")
    if cfg.train.time_budget and cfg.train.cv_folds:
        raise ConfigError("train.time_budget: a cross-validated run chooses its epochs by folds; drop one of them")
    if cfg.model.head_init == "imagenet" and not (cfg.model.pretrained or cfg.model.weights):
        raise ConfigError("model.head_init: 'imagenet' copies rows of the pretrained ImageNet classifier; "
                          "it needs model.pretrained or model.weights")
    from petlab.models import ARCHS

    ARCHS[cfg.model.arch].check_image_size(cfg.data.image_size)

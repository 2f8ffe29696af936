"""Sweep configs: a base experiment, fixed overrides, and a search space over any config key.

A space whose every dimension is `{type: grid, values: [...]}` is a grid: Optuna's GridSampler runs each
combination once (`sweep.py --grid seed=0,1,2,3` builds one from the command line), and the report gives
each setting's median and spread over the others (search/report.py)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from petlab.config import load_config, parse_value, read_yaml
from petlab.engine.latency import LATENCY
from petlab.errors import ConfigError
from petlab.monitor import Monitor

KINDS = ("loguniform", "uniform", "int", "categorical", "grid")
# A dimension that is not a config key: `int8: {type: categorical, choices: [false, true]}`. A trial with int8
# true serves its int8 twin where the twin keeps the answers (export/int8.py's check on the validation photos),
# so it is timed and scored as that twin: its latency the twin's p50, its val_accuracy the twin's.
INT8 = "int8"
PRUNERS = ("median", "hyperband", "none")


@dataclass
class SweepConfig:
    study: str
    base: Path  # the experiment YAML every trial starts from
    space: dict[str, dict]
    overrides: dict[str, Any] = field(default_factory=dict)  # fixed for every trial
    trials: int = 20
    # The objective: a petlab/monitor.py metric (default: the base recipe's train.monitor), reported per epoch
    # (pruning), told as the best checkpoint's value; every trial is monitored by it (best.pt, early stopping).
    # direction follows the metric (writing it is optional, and a contradiction is an error).
    metric: str | None = None
    direction: str | None = None
    # Two objectives, e.g. [val_accuracy, latency_ms]: the monitored metric first, then the served batch-1 p50 on
    # this CPU (engine/latency.py), minimised. Optuna's multi-objective TPE searches; the report draws the Pareto
    # front; nothing is pruned (Optuna prunes single-objective studies only).
    objectives: list[str] | None = None
    pruner: str = "median"
    seed: int = 42
    output_dir: str = "runs/sweeps"
    heartbeat_s: int = 5  # RDB storages: how often a running trial says it is alive
    grace_s: int = 20  # ... and how long silence means its worker died (the trial is then retried)


def load_sweep(path: str | Path) -> SweepConfig:
    path = Path(path)
    data = read_yaml(path)
    unknown = set(data) - set(SweepConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{path}: unknown sweep keys {sorted(unknown)}")
    for key in ("study", "base", "space"):
        if key not in data:
            raise ConfigError(f"{path}: missing {key!r}")
    data["base"] = (path.parent / data["base"]).resolve()
    sweep = SweepConfig(**data)
    if sweep.pruner not in PRUNERS:
        raise ConfigError(f"pruner: {sweep.pruner!r} is not one of {', '.join(PRUNERS)}")
    for key, spec in sweep.space.items():
        check_dimension(key, spec)
    base = load_config(sweep.base, {**sweep.overrides, **config_params(sample_midpoint(sweep.space))})
    sweep = with_objective(sweep, base.train.monitor)  # every config key must exist (above)
    if INT8 in sweep.space:
        choices = sweep.space[INT8].get("choices") or sweep.space[INT8].get("values") or []
        if not all(isinstance(c, bool) for c in choices):
            raise ConfigError(f"space.{INT8}: choices are true and false, got {choices!r}")
        if sweep.objectives is None or sweep.metric != "val_accuracy":
            raise ConfigError(f"space.{INT8}: int8 is timed and scored in a sweep with objectives: [val_accuracy, "
                              f"{LATENCY}] only")
    return sweep


def config_params(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters that are config keys (all but INT8)."""
    return {k: v for k, v in params.items() if k != INT8}


def with_objective(sweep: SweepConfig, base_monitor: str) -> SweepConfig:
    """The sweep with its metric (the base recipe's train.monitor when it names none) and the direction that
    metric is better in (petlab/monitor.py); ConfigError for an unknown metric or a contradicting direction.
    With two objectives the metric is the first, and the second must be latency_ms."""
    if sweep.objectives is not None:
        if len(sweep.objectives) != 2 or sweep.objectives[1] != LATENCY:
            raise ConfigError(f"objectives: {sweep.objectives!r}; two are supported, a validation metric and "
                              f"{LATENCY} (e.g. [val_accuracy, {LATENCY}])")
        if sweep.metric not in (None, sweep.objectives[0]):
            raise ConfigError(f"metric: {sweep.metric!r} differs from the first objective {sweep.objectives[0]!r}")
        if sweep.pruner != "none":
            sweep = dataclasses.replace(sweep, pruner="none")  # Optuna prunes single-objective studies only
        sweep = dataclasses.replace(sweep, metric=sweep.objectives[0])
    metric = sweep.metric or base_monitor
    try:
        monitor = Monitor(metric)
    except ValueError as exc:
        raise ConfigError(f"metric: {exc}") from None
    if sweep.direction not in (None, monitor.direction):
        raise ConfigError(f"direction: {sweep.direction!r} contradicts {metric}, which is {monitor.direction}d; "
                          "leave direction out (it follows the metric)")
    return dataclasses.replace(sweep, metric=metric, direction=monitor.direction)


def directions(sweep: SweepConfig) -> list[str]:
    """Optuna's direction of each objective: the metric's, then latency's (minimize) for a two-objective sweep."""
    return [sweep.direction, *(["minimize"] if sweep.objectives else [])]


def objective_names(sweep: SweepConfig) -> list[str]:
    """What the dashboard and the report call the objectives."""
    return list(sweep.objectives) if sweep.objectives else [sweep.metric]


def grid_key(value) -> str:
    """Equal grid values compare equal (1 and 1.0 are one value), however they were written."""
    return repr(float(value)) if isinstance(value, int | float) and not isinstance(value, bool) else repr(value)


def check_dimension(key: str, spec: dict) -> None:
    kind = spec.get("type")
    if kind not in KINDS:
        raise ConfigError(f"space.{key}.type: {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "categorical":
        if not spec.get("choices"):
            raise ConfigError(f"space.{key}: categorical needs a non-empty 'choices' list")
    elif kind == "grid":
        values = spec.get("values")
        if not isinstance(values, list) or not values or len(set(map(grid_key, values))) != len(values):
            raise ConfigError(f"space.{key}: grid needs a non-empty list of distinct 'values', got {values!r}")
    else:
        if "low" not in spec or "high" not in spec or not spec["low"] < spec["high"]:
            raise ConfigError(f"space.{key}: needs low < high, got {spec.get('low')!r}, {spec.get('high')!r}")
        if kind == "loguniform" and spec["low"] <= 0:
            raise ConfigError(f"space.{key}: loguniform needs low > 0")


def sample_midpoint(space: dict[str, dict]) -> dict[str, Any]:
    first = {"categorical": lambda s: s["choices"][0], "grid": lambda s: s["values"][0]}
    return {k: first.get(s["type"], lambda s: s["low"])(s) for k, s in space.items()}


def is_grid(space: dict[str, dict]) -> bool:
    return bool(space) and all(s["type"] == "grid" for s in space.values())


def grid_size(space: dict[str, dict]) -> int:
    return math.prod(len(s["values"]) for s in space.values())


def parse_grid(items: list[str]) -> dict[str, dict]:
    """--grid KEY=V1,V2,... items -> a grid space (values read as YAML: 0 is an int, 1e-3 a float)."""
    space = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., such as seed=0,1,2,3")
        values = [parse_value(v) for v in text.split(",")]
        if key.strip() in space:
            raise ConfigError(f"--grid {key.strip()}: given twice; list every value in one --grid")
        space[key.strip()] = {"type": "grid", "values": values}
    for key, spec in space.items():
        check_dimension(key, spec)
    return space


def grid_sweep(base: Path, grid: dict[str, dict], overrides: dict | None = None, study: str | None = None,
               metric: str | None = None) -> SweepConfig:
    """A grid study over an experiment YAML: every combination once, nothing pruned."""
    name = study or f"{Path(base).stem}-grid-{'-'.join(k.rsplit('.', 1)[-1] for k in grid)}"
    sweep = SweepConfig(study=name, base=Path(base).resolve(), space=grid, overrides=dict(overrides or {}),
                        trials=grid_size(grid), metric=metric, pruner="none")
    first = sample_midpoint(grid)
    sweep = with_objective(sweep, load_config(sweep.base, {**sweep.overrides, **first}).train.monitor)
    for key, spec in grid.items():  # every value of every key must make a valid recipe, not just the first
        for value in spec["values"]:
            try:
                load_config(sweep.base, {**sweep.overrides, **first, key: value})
            except ConfigError as exc:
                raise ConfigError(f"--grid {key}={value!r}: {exc}") from None
    return sweep


def suggest(trial: optuna.Trial, space: dict[str, dict]) -> dict[str, Any]:
    """{dotted config key: value} for one trial."""
    values = {}
    for key, s in space.items():
        if s["type"] == "loguniform":
            values[key] = trial.suggest_float(key, float(s["low"]), float(s["high"]), log=True)
        elif s["type"] == "uniform":
            values[key] = trial.suggest_float(key, float(s["low"]), float(s["high"]))
        elif s["type"] == "int":
            values[key] = trial.suggest_int(key, int(s["low"]), int(s["high"]), step=int(s.get("step", 1)))
        elif s["type"] == "grid":  # GridSampler hands out the combination; this records it as the trial's
            values[key] = trial.suggest_categorical(key, list(s["values"]))
        else:
            values[key] = trial.suggest_categorical(key, list(s["choices"]))
    return values


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def centre_lr(sweep: SweepConfig, finder_result: str | Path, factor: float = 10.0) -> SweepConfig:
    """The sweep with train.lr searched log-uniformly in [suggestion / factor, suggestion * factor], the
    suggestion read from an lr range test (experiments/lr_find.py: its lr_find.json, or its run directory)."""
    path = Path(finder_result)
    path = path / "lr_find.json" if path.is_dir() else path
    try:
        suggestion = float(json.loads(path.read_text())["suggestion"])
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"--lr-from {finder_result}: not an lr_find.json with a suggestion ({exc})") from None
    space = {**sweep.space, "train.lr": {"type": "loguniform", "low": suggestion / factor, "high": suggestion * factor}}
    return dataclasses.replace(sweep, space=space)

"""Sweep workers: each admits, runs and reports trials until the study holds N of them.

Every trial is a full tracked run (its own run directory and Comet experiment, tagged with the
study and trial number); the trial stores its run directory and the run its trial.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from petlab.config import Config, load_config
from petlab.data.datasets import dataset_root, resolve_dataset_name
from petlab.data.files import visible_files
from petlab.engine.experiment import run_experiment
from petlab.engine.hooks import Hook
from petlab.engine.latency import measure_run_latency
from petlab.engine.outcome import StopRun
from petlab.errors import ConfigError, DatasetError
from petlab.monitor import Monitor
from petlab.paths import relative_to_root, under_root
from petlab.search.space import (
    INT8,
    SweepConfig,
    config_params,
    directions,
    is_grid,
    make_pruner,
    objective_names,
    suggest,
)
from petlab.search.storage import (
    admission_lock,
    counted_trials,
    deliberately_experimental,
    heartbeat,
    open_storage,
    reap_dead_workers,
    redacted,
)

log = logging.getLogger(__name__)


def load_study(name: str, storage, storage_url: str | None) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ConfigError(f"no study named {name!r} in {redacted(storage_url)}") from None


def study_run_dirs(study_name: str, storage_url: str | None) -> list[Path]:
    """The run directories of a study's trials, plus its --retrain-best run."""
    study = load_study(study_name, open_storage(storage_url), storage_url)
    dirs = [t.user_attrs.get("run_dir") for t in study.trials] + [study.user_attrs.get("final_run")]
    return [under_root(d) for d in dirs if d and under_root(d).is_dir()]


def stored_path(path: Path) -> str:
    """A run directory as a study keeps it: relative to the project root when under it, so workers on other
    machines, the dashboard and the report read the same path (absolute only for runs outside the root)."""
    return str(relative_to_root(Path(path).resolve()) or Path(path).resolve())


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler for workers that ask and tell: its after_trial stops the study once the grid is
    covered, which only study.optimize() allows (elsewhere it raises). Workers here stop by the trial count,
    which for a grid is its number of combinations."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def open_study(sweep: SweepConfig, storage_url: str | None, study_name: str | None, seed_offset: int = 0,
               create: bool = True, overrides: dict | None = None) -> optuna.Study:
    """The sweep's study, created or resumed; `overrides` (the command line's) are part of its identity."""
    storage = open_storage(storage_url, sweep.heartbeat_s, sweep.grace_s)
    name = study_name or sweep.study
    if not create:
        return load_study(name, storage, storage_url)
    # Seeded TPE; each worker (and each resumption) gets its own stream, or parallel workers
    # would draw identical startup trials.
    study = optuna.create_study(study_name=name, storage=storage, directions=directions(sweep), load_if_exists=True,
                                pruner=make_pruner(sweep.pruner))
    check_same_sweep(study, sweep, storage_url, overrides or {})
    if study.metric_names != objective_names(sweep):  # the dashboard names each objective so ("Objective 0" else)
        with deliberately_experimental():
            study.set_metric_names(objective_names(sweep))
    seed = sweep.seed + 1000 * seed_offset + len(study.trials)
    if is_grid(sweep.space):  # each combination once, across workers and resumptions (the storage knows which ran)
        study.sampler = AskTellGridSampler({k: s["values"] for k, s in sweep.space.items()}, seed=seed)
    else:
        study.sampler = optuna.samplers.TPESampler(seed=seed)  # multi-objective TPE for two objectives
    return study


# Command-line overrides that say where a worker keeps things, not what its trials compute.
LOCAL_KEYS = ("output_dir", "tracking.", "train.threads", "train.device", "data.cache_dir", "data.data_dir",
              "data.num_workers")


def data_fingerprint(sweep: SweepConfig, overrides: dict) -> str | None:
    """What the trials train on: SHA-256 over the data folder's visible files (relative paths and sizes), so a
    study resumed with --data-dir on other photos is refused instead of mixing two datasets. None where the
    data is not on this machine yet (the first trial downloads it)."""
    cfg = trial_config(sweep, "fingerprint", {}, overrides, [])
    data = cfg.data
    try:
        dataset = resolve_dataset_name(data.dataset, cfg.task, data.data_dir, data.labels_csv)
        root = dataset_root(dataset, data.data_dir, data.labels_csv, download=False)
    except DatasetError:
        return None
    digest = hashlib.sha256()
    for path in visible_files(root):
        digest.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def sweep_definition(sweep: SweepConfig, overrides: dict | None = None) -> dict:
    """What makes a study's trials comparable: reusing its name with any of this changed mixes two searches.
    The base recipe counts by its content (SHA-256), not its path, so workers on other machines agree, and
    so do the command line's overrides (--epochs, --set ...), less those that only say where a worker keeps
    things. (The trial count, seeds and timings may change.)"""
    base = hashlib.sha256(Path(sweep.base).read_bytes()).hexdigest()[:16] if Path(sweep.base).is_file() else None
    command_line = {k: v for k, v in (overrides or {}).items() if not k.startswith(LOCAL_KEYS)}
    return json.loads(json.dumps({"base": sweep.base.name, "base_sha256": base, "space": sweep.space,
                                  "overrides": sweep.overrides, "command_line": command_line,
                                  "metric": sweep.metric, "direction": sweep.direction,
                                  **({"objectives": sweep.objectives} if sweep.objectives else {})},
                                 sort_keys=True, default=str))


def check_same_sweep(study: optuna.Study, sweep: SweepConfig, storage_url: str | None, overrides: dict) -> None:
    """Store the sweep's definition in a new study; refuse to reuse the study from another definition.
    Without this, optuna keeps the stored direction (asked to minimise, it maximised) and a parameter
    whose kind changed raises inside suggest(), mid-trial."""
    if len(study.directions) != len(directions(sweep)):
        raise ConfigError(f"study {study.study_name!r} in {redacted(storage_url)} has {len(study.directions)} "
                          f"objective(s), this sweep {len(directions(sweep))} ({', '.join(objective_names(sweep))}); "
                          "pass --study-name NEW for a new study")
    definition = sweep_definition(sweep, overrides)
    fingerprint = data_fingerprint(sweep, overrides)
    if fingerprint is not None:
        definition["data_files"] = fingerprint
    stored = study.user_attrs.get("sweep_definition")
    if stored is None:
        stored = {"direction": study.directions[0].name.lower()}  # a study from before definitions were stored
        if not study.trials:
            study.set_user_attr("sweep_definition", definition)
            return
    changed = sorted(key for key in definition if key in stored and stored[key] != definition[key])
    if changed:
        details = "; ".join(f"{key}: stored {stored[key]!r}, now {definition[key]!r}" for key in changed)
        raise ConfigError(f"study {study.study_name!r} in {redacted(storage_url)} was created from another sweep "
                          f"definition ({details[:600]}); pass --study-name NEW for a new study, or restore the "
                          "sweep config")


def trial_config(sweep: SweepConfig, study: str, params: dict, overrides: dict, tags: list[str]) -> Config:
    """base experiment <- sweep overrides <- trial parameters <- command-line flags. Trials go to a folder named
    after the study, under --output-dir where the command line gives one, else under the sweep file's."""
    folder = Path(overrides.get("output_dir", sweep.output_dir)) / study
    return load_config(sweep.base, {**sweep.overrides, **params, **overrides, "tracking.tags": tags,
                                    "train.monitor": sweep.metric,  # best.pt is the best by the objective
                                    "output_dir": str(folder)})


class Pruning(Hook):
    """A trial's epochs reported to its study (the monitored metric, the objective); the study's pruner may end
    the trial, as StopRun("pruned")."""

    def __init__(self, trial: optuna.Trial, monitor: Monitor):
        self.trial, self.metric = trial, monitor.metric

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.trial.report(row[self.metric], row["epoch"])
        if self.trial.should_prune():
            raise StopRun("pruned", f"{self.metric} {row[self.metric]:.4f} at epoch {row['epoch']}: "
                                    "pruned by the study's pruner")


def run_trial(study: optuna.Study, trial: optuna.Trial, sweep: SweepConfig, overrides: dict) -> None:
    trial.set_user_attr("worker_host", socket.gethostname())
    trial.set_user_attr("worker_pid", os.getpid())
    tags = [f"study:{study.study_name}", f"trial:{trial.number}"]
    try:  # before the heartbeat starts, a failure must end the trial here: nothing would ever reap it
        params = suggest(trial, sweep.space)
        int8 = bool(params.get(INT8, False))
        cfg = trial_config(sweep, study.study_name, config_params(params), overrides, tags)
    except ConfigError as exc:
        log.warning("trial %d: %s", trial.number, exc)
        trial.set_user_attr("error", str(exc))
        study.tell(trial, state=TrialState.FAIL)
        return
    except BaseException as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        study.tell(trial, state=TrialState.FAIL)
        raise
    cfg.name = f"{study.study_name}-trial{trial.number}"

    with heartbeat(study, trial):
        outcome = run_experiment(cfg, hooks=[] if sweep.objectives else [Pruning(trial, Monitor(sweep.metric))])
    trial.set_user_attr("run_dir", stored_path(outcome.run_dir))
    if outcome.status == "interrupted":
        study.tell(trial, state=TrialState.FAIL)
        raise KeyboardInterrupt
    if outcome.status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        test = outcome.results.get("test") or {}
        if "accuracy" in test:  # reported beside the objective (a grid's spread over seeds), never chosen by
            trial.set_user_attr("test_accuracy", test["accuracy"])
        value = outcome.results["val"][Monitor(sweep.metric).key]  # of the best checkpoint by it
        if sweep.objectives:  # and the served batch-1 p50 of that checkpoint, on this CPU
            latency = measure_run_latency(outcome.run_dir, int8=int8)
            trial.set_user_attr("latency_cpu", latency["cpu"])
            if int8:  # the twin serves where it passed its check: then it is what is scored, as it is what is timed
                check = latency["int8"]
                trial.set_user_attr("int8_served", check["served"])
                trial.set_user_attr("int8_val_top1_agreement", check["val_top1_agreement"])
                if check["served"]:  # (a refit run's twin was checked on test photos: its fp32 score stands)
                    value = check.get("val_accuracy_int8", value)
            study.tell(trial, [value, latency["p50_ms"]])
        else:
            study.tell(trial, value)


def work(sweep: SweepConfig, storage_url: str | None, study_name: str | None, n_trials: int,
         timeout: float | None, overrides: dict, worker_index: int = 0) -> int:
    """Run trials until the study has n_trials; returns how many this worker ran.

    A worker with nothing left to start stays while other trials still run, so that a trial
    whose worker dies is reaped and retried by someone (the heartbeat grace period later).
    """
    study = open_study(sweep, storage_url, study_name, worker_index, overrides=overrides)
    deadline = time.monotonic() + timeout if timeout else None
    ran = 0
    while deadline is None or time.monotonic() < deadline:
        reap_dead_workers(study)
        with admission_lock(storage_url):
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            trial = study.ask() if waiting or counted_trials(study) < n_trials else None
        if trial is None:
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                break
            time.sleep(sweep.heartbeat_s)
            continue
        log.info("worker %d: trial %d", worker_index, trial.number)
        run_trial(study, trial, sweep, overrides)
        ran += 1
    return ran


def retrain_best(sweep: SweepConfig, storage_url: str | None, study_name: str | None, overrides: dict) -> Path:
    """The best trial's settings as a normal tracked run (usually with more epochs), tagged as the final run."""
    study = open_study(sweep, storage_url, study_name, create=False)
    if sweep.objectives:
        raise ConfigError(f"study {study.study_name} has two objectives ({', '.join(sweep.objectives)}), so no single "
                          "best trial: its Pareto front is in the report; choose from it with `promote.py "
                          f"--from-study {study.study_name} --max-latency-ms MS`")
    best = study.best_trial
    tags = [f"study:{study.study_name}", "final"]
    cfg = trial_config(sweep, study.study_name, best.params, overrides, tags)
    cfg.name = f"{study.study_name}-final"
    log.info("retraining trial %d's settings %s for %d epochs", best.number, best.params, cfg.train.epochs)
    outcome = run_experiment(cfg)
    if outcome.status == "completed":
        study.set_user_attr("final_run", stored_path(outcome.run_dir))
    return outcome.run_dir

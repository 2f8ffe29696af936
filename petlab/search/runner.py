"""Sweep workers: each admits, runs and reports trials until the study holds N of them.

Every trial is a full tracked run (its own run directory and Comet experiment, tagged with the
study and trial number); the trial stores its run directory and the run its trial.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from petlab.config import Config, load_config
from petlab.engine.experiment import run_experiment
from petlab.engine.outcome import StopRun
from petlab.errors import ConfigError
from petlab.paths import default_study_storage
from petlab.search.space import SweepConfig, make_pruner, suggest
from petlab.search.storage import admission_lock, counted_trials, heartbeat, open_storage, reap_dead_workers

log = logging.getLogger(__name__)


def load_study(name: str, storage, storage_url: str | None) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ConfigError(f"no study named {name!r} in {storage_url or default_study_storage()}") from None


def study_run_dirs(study_name: str, storage_url: str | None) -> list[Path]:
    """The run directories of a study's trials, plus its --retrain-best run."""
    study = load_study(study_name, open_storage(storage_url), storage_url)
    dirs = [t.user_attrs.get("run_dir") for t in study.trials] + [study.user_attrs.get("final_run")]
    return [Path(d) for d in dirs if d and Path(d).is_dir()]


def open_study(sweep: SweepConfig, storage_url: str | None, study_name: str | None, seed_offset: int = 0,
               create: bool = True) -> optuna.Study:
    storage = open_storage(storage_url, sweep.heartbeat_s, sweep.grace_s)
    name = study_name or sweep.study
    if not create:
        return load_study(name, storage, storage_url)
    # Seeded TPE; each worker (and each resumption) gets its own stream, or parallel workers
    # would draw identical startup trials.
    study = optuna.create_study(study_name=name, storage=storage, direction=sweep.direction, load_if_exists=True,
                                pruner=make_pruner(sweep.pruner))
    study.sampler = optuna.samplers.TPESampler(seed=sweep.seed + 1000 * seed_offset + len(study.trials))
    return study


def trial_config(sweep: SweepConfig, study: str, params: dict, overrides: dict, tags: list[str]) -> Config:
    """base experiment <- sweep overrides <- trial parameters <- command-line flags."""
    return load_config(sweep.base, {**sweep.overrides, **params, **overrides, "tracking.tags": tags,
                                    "output_dir": str(Path(sweep.output_dir) / study)})


def run_trial(study: optuna.Study, trial: optuna.Trial, sweep: SweepConfig, overrides: dict) -> None:
    trial.set_user_attr("worker_host", socket.gethostname())
    trial.set_user_attr("worker_pid", os.getpid())
    params = suggest(trial, sweep.space)
    tags = [f"study:{study.study_name}", f"trial:{trial.number}"]
    try:
        cfg = trial_config(sweep, study.study_name, params, overrides, tags)
    except ConfigError as exc:
        log.warning("trial %d: %s", trial.number, exc)
        trial.set_user_attr("error", str(exc))
        study.tell(trial, state=TrialState.FAIL)
        return
    cfg.name = f"{study.study_name}-trial{trial.number}"

    def report(row: dict) -> None:
        trial.report(row[sweep.metric], row["epoch"])
        if trial.should_prune():
            raise StopRun("pruned", f"{sweep.metric} {row[sweep.metric]:.4f} at epoch {row['epoch']}: "
                                    "pruned by the study's pruner")

    with heartbeat(study, trial):
        outcome = run_experiment(cfg, on_epoch=report)
    trial.set_user_attr("run_dir", str(outcome.run_dir))
    if outcome.status == "interrupted":
        study.tell(trial, state=TrialState.FAIL)
        raise KeyboardInterrupt
    if outcome.status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, outcome.results["val"][sweep.metric.removeprefix("val_")])  # of the best checkpoint


def work(sweep: SweepConfig, storage_url: str | None, study_name: str | None, n_trials: int,
         timeout: float | None, overrides: dict, worker_index: int = 0) -> int:
    """Run trials until the study has n_trials; returns how many this worker ran.

    A worker with nothing left to start stays while other trials still run, so that a trial
    whose worker dies is reaped and retried by someone (the heartbeat grace period later).
    """
    study = open_study(sweep, storage_url, study_name, worker_index)
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
    best = study.best_trial
    tags = [f"study:{study.study_name}", "final"]
    cfg = trial_config(sweep, study.study_name, best.params, overrides, tags)
    cfg.name = f"{study.study_name}-final"
    log.info("retraining trial %d's settings %s for %d epochs", best.number, best.params, cfg.train.epochs)
    outcome = run_experiment(cfg)
    if outcome.status == "completed":
        study.set_user_attr("final_run", str(outcome.run_dir))
    return outcome.run_dir

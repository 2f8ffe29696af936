"""Hyperparameter sweep: python experiments/sweep.py --sweep experiments/configs/sweeps/X.yaml [--trials N]
A grid (each combination once, e.g. repeats over seeds, reported as median and spread):
    python experiments/sweep.py --config experiments/configs/X.yaml --grid seed=0,1,2,3 [--grid train.lr=1e-3,3e-3]

Runs trials until the study holds N (complete, pruned or running) -- so running the same command
again resumes the study instead of starting over. Any run.py flag (--data-dir, --epochs,
--limit-batches, ...) overrides the base experiment for every trial. Storage: SQLite in runs/ by
default, `journal:FILE` for several processes on one host, `postgresql://...` for several machines.
"""

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
from tqdm import tqdm

from petlab.cli import add_run_flags, overrides_from
from petlab.engine.context import setup_logging
from petlab.errors import ConfigError, PetlabError, report_error
from petlab.paths import runs_root
from petlab.search.report import pareto_rows, write_study_report
from petlab.search.runner import open_study, retrain_best, work
from petlab.search.space import centre_lr, grid_sweep, load_sweep, objective_names, parse_grid
from petlab.search.storage import counted_trials

log = logging.getLogger("petlab")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(parser)  # the base experiment's overrides; its --config (an experiment YAML) is refused below
    parser.add_argument("--sweep", type=Path, metavar="SWEEP_YAML",
                        help="the sweep: base experiment, overrides, space, pruner (experiments/configs/sweeps/)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a grid over these values (repeatable; Optuna's GridSampler, every combination once) "
                             "of --config's experiment, or in place of --sweep's space")
    parser.add_argument("--lr-from", metavar="LR_FIND_JSON", help="search train.lr within 10x either side of "
                        "experiments/lr_find.py's suggestion (its lr_find.json or run directory)")
    parser.add_argument("--trials", type=int, help="trials in the study in all (default: the sweep config's)")
    parser.add_argument("--storage", help="sqlite:///FILE (default runs/optuna.db), journal:FILE or postgresql://...")
    parser.add_argument("--study-name", help="default: the sweep config's study")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--timeout", type=float, help="stop starting trials after S seconds")
    parser.add_argument("--retrain-best", action="store_true", help="retrain the best trial's settings (--epochs E)")
    parser.add_argument("--report-only", action="store_true", help="only write the study report")
    # A user's report goes with the user's runs; reports/sweeps/ holds the committed evidence, which only its
    # own regeneration command (reports/README.md, with --report-dir reports/sweeps) rewrites.
    parser.add_argument("--report-dir", type=Path, default=runs_root() / "reports" / "sweeps",
                        help="reports go to DIR/<study> (default runs/reports/sweeps)")
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    return parser, parser.parse_args(argv)


def check_arguments(parser, args) -> None:
    """The rules between flags, before anything starts (tests/test_documented_commands.py asks them too)."""
    if args.config and not args.grid:  # --config means an experiment YAML, in every script
        parser.error("--config names an experiment YAML (run.py); the sweep file goes to --sweep "
                     "(its base experiment is named inside it), or give --grid KEY=V1,V2 for a grid over --config")
    if bool(args.config) == bool(args.sweep):
        parser.error("pass --sweep SWEEP_YAML, or --config EXPERIMENT_YAML with --grid")


def main(argv=None) -> int:
    parser, args = parse(argv)
    check_arguments(parser, args)
    setup_logging()
    try:
        sweep = load_sweep(args.sweep) if args.sweep else None
        if args.grid:
            grid = parse_grid(args.grid)
            sweep = grid_sweep(sweep.base, grid, sweep.overrides, None, sweep.metric) if sweep else \
                grid_sweep(Path(args.config), grid)
        if args.lr_from:
            sweep = centre_lr(sweep, args.lr_from)
        overrides = overrides_from(args)
        name = args.study_name or sweep.study
        n_trials = args.trials or sweep.trials
        if args.workers < 1 or n_trials < 1:
            raise ConfigError("--workers and --trials must be positive")
        if args.worker_index is not None:  # one of the processes started below
            work(sweep, args.storage, name, n_trials, args.timeout, overrides, args.worker_index)
            return 0
        if args.retrain_best:
            run_dir = retrain_best(sweep, args.storage, name, overrides)
            print(f"final run: {run_dir}")
            return 0
        if not args.report_only:
            run_workers(args, argv if argv is not None else sys.argv[1:], sweep, name, n_trials)
        study = open_study(sweep, args.storage, name, create=False)
        files = write_study_report(study, sweep, args.report_dir / name)
    except (PetlabError, OSError) as exc:
        return report_error(exc)
    states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in optuna.trial.TrialState}
    print(f"study {name}: " + ", ".join(f"{n} {s}" for s, n in states.items() if n))
    if "best" in files:
        best = study.best_trial
        print(f"best trial {best.number}: {sweep.metric} {best.value:.4f} {best.params}\n"
              f"  run: {best.user_attrs.get('run_dir')}\n  config: {files['best']}")
    if "pareto_front" in files:
        print(f"Pareto front of {' and '.join(objective_names(sweep))} ({files['pareto_front_png']}):")
        for row in pareto_rows(study, sweep):
            print("  trial {trial}: ".format(**row) + ", ".join(f"{k} {row[k]:.4g}" for k in objective_names(sweep))
                  + f"  {row['run_dir']}")
    if "grid_summary_md" in files:
        print(files["grid_summary_md"].read_text().rstrip())
    print(f"report: {files['trials'].parent}")
    return 0


def run_workers(args, argv, sweep, name, n_trials) -> None:
    """K worker processes on one study, with one progress bar over the study's finished trials."""
    if args.workers == 1:
        work(sweep, args.storage, name, n_trials, args.timeout, overrides_from(args), 0)
        return
    threads = max(1, len(os.sched_getaffinity(0)) // args.workers)  # workers share the cores
    procs = [subprocess.Popen([sys.executable, __file__, *argv, "--worker-index", str(i),
                               *([] if "train.threads" in overrides_from(args) else ["--threads", str(threads)])])
             for i in range(args.workers)]
    study = open_study(sweep, args.storage, name, overrides=overrides_from(args))
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    with tqdm(total=n_trials, desc=f"study {name}", unit="trial") as bar:
        while any(p.poll() is None for p in procs):
            bar.n = len(study.get_trials(deepcopy=False, states=finished))
            bar.refresh()
            time.sleep(2)
    failed = [p.returncode for p in procs if p.returncode]
    if failed:
        log.warning("%d worker(s) exited with errors %s; run the same command again to finish the study",
                    len(failed), failed)
    log.info("study %s now holds %d trials", name, counted_trials(study))


if __name__ == "__main__":
    sys.exit(main())

"""Study report: Optuna's figures (PNG via matplotlib, HTML via plotly), the trials table, best parameters."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import optuna
import yaml
from matplotlib.ticker import NullFormatter

from petlab.reports.figures import pyplot
from petlab.search.space import SweepConfig

log = logging.getLogger(__name__)

PLOTS = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
    "slice": "plot_slice",
}


def write_study_report(study: optuna.Study, sweep: SweepConfig, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"trials": out_dir / "trials.csv"}
    study.trials_dataframe().to_csv(files["trials"], index=False)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        log.warning("no completed trials yet: only the trials table was written")
        return files
    files["best"] = out_dir / "best_params.yaml"
    files["best"].write_text(best_config_yaml(study, sweep))
    plt = pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, function in PLOTS.items():
            if name == "param_importances" and (len(complete) < 2 or len(study.best_trial.params) < 2):
                continue  # importances need at least two parameters and two finished trials
            try:
                ax = getattr(optuna.visualization.matplotlib, function)(study)
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
                panels = len(ax.flat) if hasattr(ax, "flat") else 1
                fig.set_size_inches(max(8, 5 * panels + 2), 5)  # room for each slice and the colour bar
                for axis in fig.axes:  # log axes: major ticks only, or the labels run into each other
                    for which in (axis.xaxis, axis.yaxis):
                        if which.get_scale() == "log":
                            which.set_minor_formatter(NullFormatter())
                files[f"{name}_png"] = out_dir / f"{name}.png"
                fig.savefig(files[f"{name}_png"], dpi=110, bbox_inches="tight")
                plt.close(fig)
                files[f"{name}_html"] = out_dir / f"{name}.html"
                getattr(optuna.visualization, function)(study).write_html(files[f"{name}_html"],
                                                                           include_plotlyjs="cdn")
            except (ValueError, RuntimeError) as exc:
                log.warning("study report: %s skipped (%s)", name, exc)
    return files


def best_config_yaml(study: optuna.Study, sweep: SweepConfig) -> str:
    """A full experiment config (base + overrides + best parameters) for `run.py --config`."""
    from petlab.config import load_config

    best = study.best_trial
    cfg = load_config(sweep.base, {**sweep.overrides, **best.params})
    cfg.name = f"{study.study_name}-best"
    header = (f"# Best trial {best.number} of study {study.study_name}: {sweep.metric} = {best.value:.4f}\n"
              f"# parameters: {best.params}\n# python experiments/run.py --config THIS_FILE [--epochs E]\n")
    return header + yaml.safe_dump(cfg.to_dict(), sort_keys=False)

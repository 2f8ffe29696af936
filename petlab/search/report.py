"""Study report: Optuna's figures (PNG via matplotlib, HTML via plotly), the trials table, best parameters."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

import optuna
import yaml
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from petlab.fileio import write_csv
from petlab.reports.figures import pyplot
from petlab.search.space import SweepConfig, config_params, is_grid, objective_names
from petlab.search.storage import deliberately_experimental

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
    trials = study.trials_dataframe()
    write_csv(files["trials"], trials.to_dict("records"), list(trials.columns))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        log.warning("no completed trials yet: only the trials table was written")
        return files
    if sweep.objectives:
        return {**files, **write_pareto_front(study, sweep, out_dir)}
    files["best"] = out_dir / "best_params.yaml"
    files["best"].write_text(best_config_yaml(study, sweep))
    if is_grid(sweep.space):
        files.update(write_grid_summary(grid_summary(complete, sweep), sweep, out_dir))
    plt = pyplot()
    with deliberately_experimental():
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


def pareto_rows(study: optuna.Study, sweep: SweepConfig) -> list[dict]:
    """The Pareto front of a two-objective study, best first by the first objective: each trial's number,
    objectives, parameters and run directory."""
    names = objective_names(sweep)
    rows = [{"trial": t.number, **dict(zip(names, t.values)), **t.params, "run_dir": t.user_attrs.get("run_dir"),
             "latency_cpu": t.user_attrs.get("latency_cpu")} for t in study.best_trials]
    first = names[0]
    return sorted(rows, key=lambda r: -r[first] if sweep.direction == "maximize" else r[first])


def write_pareto_front(study: optuna.Study, sweep: SweepConfig, out_dir: Path) -> dict[str, Path]:
    """pareto_front.png and .html (Optuna's plot_pareto_front, each objective named) and pareto_front.csv."""
    names = objective_names(sweep)
    files = {"pareto_front": out_dir / "pareto_front.csv", "pareto_front_png": out_dir / "pareto_front.png",
             "pareto_front_html": out_dir / "pareto_front.html"}
    rows = pareto_rows(study, sweep)
    write_csv(files["pareto_front"], rows)
    plt = pyplot()
    with deliberately_experimental():
        ax = optuna.visualization.matplotlib.plot_pareto_front(study, target_names=names)
        fig = ax.get_figure()
        fig.set_size_inches(8, 5.5)
        cpu = next((r["latency_cpu"] for r in rows if r.get("latency_cpu")), "this CPU")
        ax.set_title(f"{study.study_name}: {names[0]} against {names[1]} (batch-1 p50 on {cpu})")
        ax.set_yscale("log")  # latencies span several-fold: a log axis keeps the fast end, where the front lies, apart
        for axis_ticks in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_ticks(FormatStrFormatter("%g"))  # 5, 10, 20 ms rather than 10^1
        for row in rows:  # the front's trials by number, as pareto_front.csv lists them
            ax.annotate(f"#{row['trial']}", (row[names[0]], row[names[1]]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        fig.savefig(files["pareto_front_png"], dpi=110, bbox_inches="tight")
        plt.close(fig)
        optuna.visualization.plot_pareto_front(study, target_names=names).write_html(files["pareto_front_html"],
                                                                                     include_plotlyjs="cdn")
    return files


def best_config_yaml(study: optuna.Study, sweep: SweepConfig) -> str:
    """A full experiment config (base + overrides + best parameters) for `run.py --config`."""
    from petlab.config import load_config

    best = study.best_trial
    cfg = load_config(sweep.base, {**sweep.overrides, **config_params(best.params)})
    cfg.name = f"{study.study_name}-best"
    header = (f"# Best trial {best.number} of study {study.study_name}: {sweep.metric} = {best.value:.4f}\n"
              f"# parameters: {best.params}\n# python experiments/run.py --config THIS_FILE [--epochs E]\n")
    return header + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# Grid keys that are repetitions, not settings: a grid's summary pools the trials over them.
REPEAT_KEYS = ("seed",)


def grid_summary(complete: list, sweep: SweepConfig) -> list[dict]:
    """One row per setting of the grid's other keys: how many trials (seeds), and the objective's and the test
    accuracy's median, min, max and standard deviation over them."""
    settings = [k for k in sweep.space if k not in REPEAT_KEYS]
    groups: dict[tuple, list] = {}
    for trial in complete:
        groups.setdefault(tuple(trial.params[k] for k in settings), []).append(trial)
    rows = []
    for values, trials in groups.items():
        row = {**dict(zip(settings, values)), "trials": len(trials)}
        for name, numbers in ((sweep.metric, [t.value for t in trials]),
                              ("test_accuracy", [t.user_attrs["test_accuracy"] for t in trials
                                                 if "test_accuracy" in t.user_attrs])):
            if numbers:
                row.update({f"{name}_median": statistics.median(numbers), f"{name}_min": min(numbers),
                            f"{name}_max": max(numbers),
                            f"{name}_std": statistics.stdev(numbers) if len(numbers) > 1 else 0.0,
                            f"{name}_values": [round(v, 6) for v in numbers]})
        rows.append(row)
    return rows


def write_grid_summary(rows: list[dict], sweep: SweepConfig, out_dir: Path) -> dict[str, Path]:
    """grid_summary.csv, grid_summary.md (median [min-max], sd) and grid_summary.png (each trial a dot)."""
    files = {"grid_summary": out_dir / "grid_summary.csv", "grid_summary_md": out_dir / "grid_summary.md",
             "grid_summary_png": out_dir / "grid_summary.png"}
    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_csv(files["grid_summary"], rows, columns)
    settings = [k for k in sweep.space if k not in REPEAT_KEYS]
    metrics = [m for m in (sweep.metric, "test_accuracy") if f"{m}_median" in columns]
    lines = ["| " + " | ".join([*settings, "trials", *(f"{m}: median [min-max], sd" for m in metrics)]) + " |",
             "|" + "---|" * (len(settings) + 1 + len(metrics))]
    for row in rows:
        cells = [str(row[k]) for k in settings] + [str(row["trials"])]
        cells += [f"{row[f'{m}_median']:.4f} [{row[f'{m}_min']:.4f}-{row[f'{m}_max']:.4f}], {row[f'{m}_std']:.4f}"
                  if f"{m}_median" in row else "" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    files["grid_summary_md"].write_text("\n".join(lines) + "\n")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 + 1.2 * len(rows) * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for x, row in enumerate(rows):
            values = row.get(f"{metric}_values", [])
            ax.scatter([x] * len(values), values, color="C0", alpha=0.7)
            ax.hlines(row[f"{metric}_median"], x - 0.25, x + 0.25, color="C3", label="median" if x == 0 else None)
        ax.set_xticks(range(len(rows)), [", ".join(str(row[k]) for k in settings) or "all" for row in rows])
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{sweep.study}: each dot a trial ({', '.join(REPEAT_KEYS)} varied)")
    fig.tight_layout()
    fig.savefig(files["grid_summary_png"], dpi=110)
    plt.close(fig)
    return files

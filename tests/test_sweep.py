"""experiments/sweep.py end to end on generated images: resume, workers, a killed worker, the report."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from petlab.config import ConfigError, load_config
from petlab.registry import Registry
from petlab.search.space import load_sweep
from petlab.search.storage import open_storage
from tests.imaging import make_imagefolder
from tests.postgres import postgres_server
from tests.recipe import HEAD_ONLY, TINY, Recipe
from tests.runs import REPO, script

# The tiny recipe as a sweep's base file: head-only on cached features, so trials take seconds.
BASE = {"name": "tiny", "task": "cats_vs_dogs", **Recipe(TINY).shrink({
    **HEAD_ONLY, "train.epochs": 2, "train.lr": 0.01, "train.optimizer": "adam", "train.threads": 1}).yaml()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("sweepdata"), {"train": 12, "val": 4, "test": 2})


def sweep_files(tmp_path, trials=4, base=None, **extra):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base or BASE))
    sweep = {"study": "tiny", "base": "base.yaml", "trials": trials, "pruner": "median", "seed": 1,
             "heartbeat_s": 1, "grace_s": 3, "output_dir": str(tmp_path / "runs"),
             "space": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1},
                       "train.batch_size": {"type": "categorical", "choices": [4, 8]}}, **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def sweep_args(tmp_path, data, storage, *more):
    return ["--sweep", sweep_files(tmp_path) if not (tmp_path / "sweep.yaml").exists() else tmp_path / "sweep.yaml",
            "--data-dir", data, "--storage", storage, "--tracking", "none", "--report-dir", tmp_path / "reports",
            *more]


def trials(storage, name="tiny"):
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def states(storage):
    found = {}
    for t in trials(storage):
        found[t.state.name] = found.get(t.state.name, 0) + 1
    return found


@pytest.mark.slow
def test_a_study_runs_resumes_to_its_total_and_never_overshoots(tmp_path, data):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sweep_files(tmp_path, trials=3)
    script("sweep.py", *sweep_args(tmp_path, data, storage))
    assert states(storage) == {"COMPLETE": 3}
    script("sweep.py", *sweep_args(tmp_path, data, storage, "--trials", "5"))
    assert states(storage) == {"COMPLETE": 5}
    proc = script("sweep.py", *sweep_args(tmp_path, data, storage, "--trials", "5"))
    assert states(storage) == {"COMPLETE": 5} and "5 complete" in proc.stdout
    for t in trials(storage):  # the trial knows its run, and the run its trial
        results = json.loads(open(f"{t.user_attrs['run_dir']}/results.json").read())
        assert f"trial:{t.number}" in results["tags"] and "study:tiny" in results["tags"]
        assert results["feature_cache"] is True
        config = yaml.safe_load(open(f"{t.user_attrs['run_dir']}/config.yaml"))
        assert config["train"]["lr"] == pytest.approx(t.params["train.lr"])
        assert config["train"]["batch_size"] == t.params["train.batch_size"]
        assert t.value == pytest.approx(results["val"]["accuracy"])


@pytest.mark.slow
def test_study_report_has_figures_table_and_a_runnable_best_config(tmp_path, data):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    script("sweep.py", *sweep_args(tmp_path, data, storage, "--trials", "4"))
    folder = tmp_path / "reports" / "tiny"
    for name in ("optimization_history", "param_importances", "parallel_coordinate", "slice"):
        assert (folder / f"{name}.png").stat().st_size > 10_000, name
        assert "plotly" in (folder / f"{name}.html").read_text()[:5000].lower(), name
    table = (folder / "trials.csv").read_text().splitlines()
    assert len(table) == 5 and "params_train.lr" in table[0]
    best = load_config(folder / "best_params.yaml")
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert best.train.lr == pytest.approx(study.best_params["train.lr"]) and best.model.arch == "resnet18"
    assert best.name == "tiny-best"  # the header is comment lines of their own, not one line swallowing `name:`
    header = (folder / "best_params.yaml").read_text().splitlines()[:4]
    assert [line.startswith("#") for line in header] == [True, True, True, False]
    final = script("sweep.py", *sweep_args(tmp_path, data, storage, "--retrain-best", "--epochs", "3"))
    run_dir = final.stdout.split("final run: ")[1].strip()
    results = json.loads(open(f"{run_dir}/results.json").read())
    assert results["epochs_completed"] == 3 and "final" in results["tags"]
    assert optuna.load_study(study_name="tiny", storage=storage).user_attrs["final_run"] == run_dir
    # promotion from the study picks its best run by validation accuracy, the final run included
    registry = tmp_path / "registry"
    script("promote.py", "--registry", registry, "--task", "cats_vs_dogs", "--from-study", "tiny", "--storage",
           storage, "--images", data)
    card = Registry(registry).card("cats_vs_dogs", 1)
    records = [json.loads(open(f"{d}/results.json").read())
               for d in [t.user_attrs["run_dir"] for t in study.trials] + [run_dir]]
    candidates = [r["run_dir"] for r in records if r["status"] == "completed"]  # pruned runs are not candidates
    best_val = max(r["val"]["accuracy"] for r in records if r["status"] == "completed")
    assert card["selected_by"] == {"metric": "val_accuracy", "value": best_val, "candidates": len(candidates)}
    assert card["source_run"] in {Path(d).name for d in candidates}  # the run's folder name: no absolute path


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as url:
        yield url


@pytest.mark.slow
@pytest.mark.parametrize("storage_kind", ["journal", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_two_workers_share_one_study_without_losing_or_duplicating_trials(tmp_path, data, storage_kind, request):
    if storage_kind == "journal":
        storage = f"journal:{tmp_path / 'study.log'}"
    else:  # the multi-machine path: a real server; a fresh study name per run of the suite
        storage = request.getfixturevalue("postgres")
        optuna.delete_study(study_name="tiny", storage=storage) if "tiny" in optuna.get_all_study_names(storage) \
            else None
    sweep_files(tmp_path, trials=6)
    script("sweep.py", *sweep_args(tmp_path, data, storage, "--workers", "2"))
    if storage_kind == "journal":
        storage = open_storage(storage)  # optuna.load_study takes URLs of databases only
    done = trials(storage)
    assert [t.state for t in done] == [TrialState.COMPLETE] * 6
    assert sorted(t.number for t in done) == list(range(6))
    assert len({t.user_attrs["worker_pid"] for t in done}) == 2  # both workers ran trials
    assert len({t.user_attrs["run_dir"] for t in done}) == 6
    for t in done:  # a worker runs several experiments; each train.log holds only its own
        assert open(f"{t.user_attrs['run_dir']}/train.log").read().count("done in") == 1


@pytest.mark.slow
def test_a_killed_worker_s_trial_is_detected_and_retried(tmp_path, data):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    # slow enough to be killed mid-trial (augmented: no feature cache), quick enough to finish on resume: the
    # resume runs the same command (a study refuses another command line, --epochs included)
    slow = {**BASE, "data": {"image_size": 64, "augment": True}, "train": {**BASE["train"], "epochs": 20}}
    sweep_files(tmp_path, trials=3, base=slow)
    worker = subprocess.Popen([sys.executable, str(REPO / "experiments/sweep.py"),
                               *map(str, sweep_args(tmp_path, data, storage))], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    victim = None
    while time.monotonic() < deadline and victim is None:
        time.sleep(0.5)
        try:
            running = [t for t in trials(storage) if t.state == TrialState.RUNNING and "run_dir" not in t.user_attrs]
        except (KeyError, optuna.exceptions.StorageInternalError):
            continue
        victim = running[0] if running and any((tmp_path / "runs").rglob("metrics.csv")) else None
    assert victim is not None, "no trial started"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert trials(storage)[victim.number].state == TrialState.RUNNING  # left behind by the dead worker

    script("sweep.py", *sweep_args(tmp_path, data, storage))
    final = trials(storage)
    assert final[victim.number].state == TrialState.FAIL
    retries = [t for t in final if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == victim.params
    assert sum(t.state == TrialState.COMPLETE for t in final) == 3


@pytest.mark.slow
def test_bad_sweep_configs_are_clear_errors(tmp_path, data):
    path = sweep_files(tmp_path, space={"train.lr": {"type": "loguniform", "low": 0, "high": 1}})
    proc = script("sweep.py", "--sweep", path, "--data-dir", data, check=False)
    assert proc.returncode == 2 and "loguniform needs low > 0" in proc.stderr
    path = sweep_files(tmp_path, space={"train.nope": {"type": "uniform", "low": 0, "high": 1}})
    proc = script("sweep.py", "--sweep", path, "--data-dir", data, check=False)
    assert proc.returncode == 2 and "unknown config key" in proc.stderr


@pytest.mark.slow
def test_config_means_an_experiment_yaml_in_sweep_py_too(tmp_path, data):
    """One meaning for --config: sweep.py refuses it and names --sweep, before any study is opened."""
    path = sweep_files(tmp_path)
    proc = script("sweep.py", "--config", path, "--data-dir", data, "--storage", f"sqlite:///{tmp_path / 'x.db'}",
                  check=False)
    assert proc.returncode == 2 and "the sweep file goes to --sweep" in proc.stderr
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("path", sorted((REPO / "experiments/configs/sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweep_configs_load(path):
    sweep = load_sweep(path)
    assert sweep.base.is_file() and sweep.trials >= 20
    assert load_config(sweep.base, sweep.overrides).model.freeze_backbone  # head-only: the feature cache applies


def test_reusing_a_study_name_after_editing_the_sweep_is_refused(tmp_path):
    """Issue 24: optuna keeps a study's stored direction (asked to minimise, it maximised) and a
    parameter whose kind changed raised in suggest(); the sweep's definition is now stored and compared."""
    import dataclasses

    from petlab.search.runner import open_study

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = load_sweep(REPO / "experiments/configs/sweeps/lite0_cats_vs_dogs.yaml")
    study = open_study(sweep, storage, "edited")
    assert study.user_attrs["sweep_definition"]["direction"] == "maximize"
    assert study.metric_names == ["val_accuracy"]  # Optuna's dashboard said "Objective 0"
    assert open_study(sweep, storage, "edited").study_name == "edited"  # the same sweep reopens it
    minimise = dataclasses.replace(sweep, direction="minimize", metric="val_loss")
    with pytest.raises(ConfigError, match=r"created from another sweep definition \(direction: stored 'maximize', "
                                          r"now 'minimize'; metric: stored 'val_accuracy', now 'val_loss'\)"):
        open_study(minimise, storage, "edited")
    recategorised = dataclasses.replace(sweep, space={**sweep.space, "train.lr": {"type": "categorical",
                                                                                  "choices": [0.01, 0.1]}})
    with pytest.raises(ConfigError, match="space: stored"):
        open_study(recategorised, storage, "edited")
    # a study from before definitions were stored, with trials: its direction is still compared
    old = optuna.create_study(study_name="older", storage=storage, direction="maximize")
    old.tell(old.ask(), 0.5)
    with pytest.raises(ConfigError, match="direction: stored 'maximize', now 'minimize'"):
        open_study(minimise, storage, "older")


def test_a_trial_that_fails_before_its_heartbeat_is_marked_failed(tmp_path):
    """Not left RUNNING for ever (counted toward the total, waited on by other workers)."""
    import dataclasses

    from petlab.search.runner import run_trial

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = load_sweep(REPO / "experiments/configs/sweeps/lite0_cats_vs_dogs.yaml")
    study = optuna.create_study(study_name="kinds", storage=storage, direction="maximize")
    first = study.ask()
    first.suggest_float("train.lr", 1e-3, 1e-1, log=True)
    study.tell(first, 0.5)
    changed = dataclasses.replace(sweep, space={"train.lr": {"type": "categorical", "choices": ["a", "b"]}})
    with pytest.raises(ValueError):
        run_trial(study, study.ask(), changed, {})
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert "ValueError" in study.trials[1].user_attrs["error"]


@pytest.mark.slow
def test_a_grid_runs_each_combination_once_and_reports_median_and_spread(tmp_path, data):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    args = ["--config", tmp_path / "base.yaml", "--grid", "seed=0,1,2", "--grid", "train.lr=0.01,0.03",
            "--data-dir", data, "--storage", storage, "--tracking", "none", "--report-dir", tmp_path / "reports",
            "--output-dir", tmp_path / "runs"]
    proc = script("sweep.py", *args)
    done = trials(storage, "base-grid-seed-lr")
    assert len(done) == 6 and {t.state for t in done} == {TrialState.COMPLETE}
    assert sorted((t.params["seed"], t.params["train.lr"]) for t in done) == \
        sorted((s, lr) for s in (0, 1, 2) for lr in (0.01, 0.03))
    assert all(0 <= t.user_attrs["test_accuracy"] <= 1 for t in done)
    report = tmp_path / "reports" / "base-grid-seed-lr"
    with (report / "grid_summary.csv").open() as fh:
        import csv

        rows = list(csv.DictReader(fh))
    assert sorted(float(r["train.lr"]) for r in rows) == [0.01, 0.03] and {r["trials"] for r in rows} == {"3"}
    for row in rows:
        values = [t.value for t in done if t.params["train.lr"] == float(row["train.lr"])]
        assert float(row["val_accuracy_median"]) == pytest.approx(sorted(values)[1])
        assert float(row["val_accuracy_min"]) == pytest.approx(min(values))
        assert float(row["val_accuracy_max"]) == pytest.approx(max(values))
        assert "test_accuracy_median" in row
    assert "median [min-max], sd" in proc.stdout  # the summary is printed too
    assert (report / "grid_summary.png").stat().st_size > 5_000
    script("sweep.py", *args)  # the same command again: every combination has run, so nothing more runs
    assert len(trials(storage, "base-grid-seed-lr")) == 6


@pytest.mark.parametrize("items, message", [(["seed"], "expected KEY=V1,V2"), (["seed=1,1"], "distinct"),
                                            (["seed="], "expected KEY=V1,V2")])
def test_a_bad_grid_is_a_clear_error(items, message):
    from petlab.search.space import parse_grid

    with pytest.raises(ConfigError, match=message):
        parse_grid(items)
    assert parse_grid(["seed=0,1", "train.lr=1e-3,3e-3"]) == {
        "seed": {"type": "grid", "values": [0, 1]}, "train.lr": {"type": "grid", "values": [1e-3, 3e-3]}}


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u@h/db?password=s3cret", "postgresql://u@h/db?password=***"),
    ("postgresql://u:p@s3cret@h/db", "postgresql://u:***@h/db"),
    ("postgresql:/u:s3cret@h/db", "postgresql:/u:***@h/db"),
    ("postgresql://u:s3cret@h:abc/db", "postgresql://u:***@h:abc/db"),
    ("mysql://u@h/db?sslmode=require&PassWord=s3cret", "mysql://u@h/db?sslmode=require&PassWord=***"),
])
def test_a_password_is_hidden_in_every_form_a_url_carries_it(url, shown):
    """Each of these once printed its password, and the non-numeric port raised ValueError."""
    from petlab.search.storage import redacted

    assert redacted(url) == shown and "s3cret" not in redacted(url)
    with pytest.raises(ConfigError) as error:
        open_storage(url)
    assert "s3cret" not in str(error.value) and str(error.value).startswith("--storage ")


def test_a_study_resumed_with_another_command_line_or_base_file_is_refused(tmp_path):
    """A resumed study once mixed trials of --epochs 1 and 3, and of label smoothing 0.1 and 0.5 (an edited base
    file): both are part of its identity now. Where a worker keeps things (--output-dir, --threads) is not."""
    from petlab.search.runner import open_study
    from petlab.search.space import grid_sweep, parse_grid

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = grid_sweep(base, parse_grid(["seed=0,1"]))
    open_study(sweep, storage, "s", overrides={"train.epochs": 1, "output_dir": "a"})
    open_study(sweep, storage, "s", overrides={"train.epochs": 1, "output_dir": "b", "train.threads": 1})
    with pytest.raises(ConfigError, match="command_line: stored"):
        open_study(sweep, storage, "s", overrides={"train.epochs": 3})
    base.write_text(yaml.safe_dump({**BASE, "train": {**BASE["train"], "label_smoothing": 0.5}}))
    with pytest.raises(ConfigError, match="base_sha256: stored"):
        open_study(sweep, storage, "s", overrides={"train.epochs": 1})


def test_a_study_resumed_on_other_photos_is_refused(tmp_path):
    """A sweep resumed with --data-dir on other data once mixed trials of both in one study: the data folder's
    file list and sizes are part of its identity (not its path: another machine keeps it elsewhere)."""
    from petlab.search.runner import open_study
    from petlab.search.space import grid_sweep, parse_grid

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = grid_sweep(base, parse_grid(["seed=0,1"]))
    first = make_imagefolder(tmp_path / "first", {"train": 6, "val": 2})
    open_study(sweep, storage, "s", overrides={"data.data_dir": str(first)})
    import shutil
    moved = tmp_path / "elsewhere"
    shutil.copytree(first, moved)  # the same photos on another path: the same study
    open_study(sweep, storage, "s", overrides={"data.data_dir": str(moved)})
    other = make_imagefolder(tmp_path / "other", {"train": 8, "val": 2})
    with pytest.raises(ConfigError, match="data_files: stored"):
        open_study(sweep, storage, "s", overrides={"data.data_dir": str(other)})


@pytest.mark.parametrize("items, message", [
    (["model.dropout=0.1,2.0"], r"--grid model.dropout=2.0: "),  # once: 0.1 ran twice, 2.0 failed, exit 0
    (["seed=1,1.0"], "distinct"),
    (["seed=0,1", "seed=2,3"], "given twice"),
])
def test_every_grid_value_is_checked_and_unique(tmp_path, items, message):
    from petlab.search.space import grid_sweep, parse_grid

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    with pytest.raises(ConfigError, match=message):
        grid_sweep(base, parse_grid(items))


@pytest.mark.parametrize("value", ["1" * 5000, "[" * 5000])
def test_a_huge_set_value_is_a_config_error(value):
    from petlab.cli import parse_set

    with pytest.raises(ConfigError, match="over the 1000 allowed"):
        parse_set([f"train.lr={value}"])


def test_trials_go_under_the_command_line_s_output_dir(tmp_path):
    """--output-dir was once overwritten by the sweep file's own folder: a sweep's runs landed in runs/sweeps/."""
    from petlab.search.runner import trial_config
    from petlab.search.space import grid_sweep, parse_grid

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    sweep = grid_sweep(base, parse_grid(["seed=0,1"]))
    mine = trial_config(sweep, "s", {}, {"output_dir": str(tmp_path / "mine")}, [])
    default = trial_config(sweep, "s", {}, {}, [])
    assert Path(mine.output_dir) == tmp_path / "mine" / "s"
    assert Path(default.output_dir) == Path(sweep.output_dir) / "s"


def test_a_study_keeps_run_directories_relative_to_the_project_root(tmp_path):
    """Trials stored absolute paths of the machine that ran them; the dashboard and other workers read these."""
    from petlab.paths import project_root
    from petlab.search.runner import stored_path

    assert stored_path(project_root() / "runs" / "study" / "run-1") == "runs/study/run-1"
    assert stored_path(tmp_path / "run-2") == str(tmp_path.resolve() / "run-2")  # outside the root: as it is


@pytest.mark.slow
def test_the_readmes_sweep_command_leaves_the_committed_reports_alone(tiny_photos, tmp_path):
    """`sweep.py --sweep .../lite0_cats_vs_dogs.yaml --trials 4`, as the README has it, rewrote 10 committed files
    of reports/sweeps/lite0_cats_vs_dogs_lr_bs/: a user's report now goes under runs/."""
    import shutil

    def status() -> str:
        return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "reports"],
                              cwd=REPO, capture_output=True, text=True, check=True).stdout

    before = status()
    sweep = load_sweep(REPO / "experiments/configs/sweeps/lite0_cats_vs_dogs.yaml")
    report = REPO / "runs" / "reports" / "sweeps" / sweep.study
    trials = REPO / sweep.output_dir / sweep.study  # the sweep file's own output folder, as for a user
    new = [folder for folder in (report, trials) if not folder.exists()]
    try:
        script("sweep.py", "--sweep", REPO / "experiments/configs/sweeps/lite0_cats_vs_dogs.yaml", "--trials", "1",
               "--data-dir", tiny_photos, "--epochs", "1", "--tracking", "none",
               "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", timeout=900)
        assert status() == before  # nothing under reports/ changed or appeared
        assert (report / "trials.csv").is_file()
    finally:
        for folder in new:  # what this test wrote into the checkout's (git-ignored) runs/
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_a_two_objective_study_reports_its_front_and_promotion_by_budget_picks_from_it(tmp_path, data):
    """objectives [val_accuracy, latency_ms]: each trial's served batch-1 p50 is measured on this CPU, the report
    draws the Pareto front, and promote.py --max-latency-ms chooses the most accurate run that fits."""
    from petlab.engine.latency import this_cpu
    from petlab.reports.runs import read_local_run
    from petlab.search.runner import study_run_dirs

    sweep_files(tmp_path, trials=3, objectives=["val_accuracy", "latency_ms"], pruner="none",
                space={"data.image_size": {"type": "grid", "values": [32, 64, 160]}})
    storage = f"sqlite:///{tmp_path / 'two.db'}"
    proc = script("sweep.py", *sweep_args(tmp_path, data, storage, "--output-dir", tmp_path / "runs"))
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert study.metric_names == ["val_accuracy", "latency_ms"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3 and all(t.user_attrs["latency_cpu"] == this_cpu() for t in done)
    latency = {t.params["data.image_size"]: t.values[1] for t in done}
    assert 0 < latency[32] < latency[160]  # 25 times the pixels: measurably slower to answer
    report = tmp_path / "reports" / "tiny"
    assert (report / "pareto_front.png").stat().st_size > 5_000 and (report / "pareto_front.html").is_file()
    with (report / "pareto_front.csv").open() as fh:
        import csv

        front = list(csv.DictReader(fh))
    assert sorted(int(r["trial"]) for r in front) == sorted(t.number for t in study.best_trials)
    assert "Pareto front of val_accuracy and latency_ms" in proc.stdout
    for run_dir in study_run_dirs("tiny", storage):  # each run keeps its latency, with the CPU and the pet check
        recorded = json.loads((run_dir / "results.json").read_text())["latency"]
        # ResNet18 has no ImageNet backbone here: the server pays the separate view's pass, so the latency does
        assert recorded["cpu"] == this_cpu() and recorded["not_a_pet"] == "a separate ImageNet efficientnet_lite0 pass"

    budget = sorted(latency.values())[1]  # the two faster runs fit
    registry = tmp_path / "registry"
    promote = ["promote.py", "--registry", registry, "--task", "cats_vs_dogs", "--from-study", "tiny",
               "--storage", storage, "--images", data / "train"]
    script(*promote, "--max-latency-ms", budget)
    card = Registry(registry).card("cats_vs_dogs", 1)
    assert card["latency"]["budget_ms"] == pytest.approx(budget) and card["latency"]["cpu"] == this_cpu()
    assert card["latency"]["p50_ms"] <= budget
    fitting = [read_local_run(d) for d in study_run_dirs("tiny", storage)]
    fitting = [r for r in fitting if r.results["latency"]["p50_ms"] <= budget]
    assert len(fitting) == 2
    best = max(r.results["val"]["accuracy"] for r in fitting)
    assert card["selected_by"]["value"] == best and card["selected_by"]["candidates"] == 2
    assert "## Latency" in (Registry(registry).version_dir("cats_vs_dogs", 1) / "card.md").read_text()
    refused = script(*promote, "--max-latency-ms", latency[32] / 100, check=False)
    assert refused.returncode == 2 and "none of the 3 runs answers within" in refused.stderr


@pytest.mark.slow
def test_int8_as_a_sweep_dimension_times_and_scores_the_twin_and_promotion_serves_it(tiny_photos, tmp_path):
    """space.int8 [false, true]: the int8 trial quantises its checkpoint as promote.py --int8 would and checks the
    twin on its validation photos; where it passes, the twin is what the trial times and scores. Promoted under a
    budget, a run timed as its twin is promoted with it. int8 is refused where it cannot be scored."""
    from petlab.engine.latency import this_cpu
    from petlab.search.runner import study_run_dirs

    base = {"name": "lite0", "task": "cats_vs_dogs", **Recipe({**TINY, "model.arch": "efficientnet_lite0"}).shrink({
        **HEAD_ONLY, "data.image_size": 224, "train.epochs": 2, "train.lr": 0.01}).yaml()}
    sweep_files(tmp_path, base=base, objectives=["val_accuracy", "latency_ms"], pruner="none",
                space={"int8": {"type": "grid", "values": [False, True]}})
    storage = f"sqlite:///{tmp_path / 'int8.db'}"
    script("sweep.py", *sweep_args(tmp_path, tiny_photos, storage, "--output-dir", tmp_path / "runs"))
    done = {t.params["int8"]: t for t in optuna.load_study(study_name="tiny", storage=storage).get_trials(
        states=(TrialState.COMPLETE,))}
    assert set(done) == {False, True}
    results = {d.name: json.loads((d / "results.json").read_text()) for d in study_run_dirs("tiny", storage)}
    recorded = {t: results[Path(trial.user_attrs["run_dir"]).name] for t, trial in done.items()}
    assert recorded[False]["latency"]["runtime"] == "onnxruntime fp32" and "int8" not in recorded[False]["latency"]
    check = recorded[True]["latency"]["int8"]
    # Lite0's features on 12 real validation photos: its twin agrees on every answer (production: 400 of 400)
    assert check["served"] and check["val_top1_agreement"] == 1.0 and check["test_accuracy_fp32"] is None  # no test
    assert recorded[True]["latency"]["runtime"] == "onnxruntime int8" and recorded[True]["latency"]["cpu"] == this_cpu()
    assert done[True].values[0] == check["val_accuracy_int8"] and done[True].user_attrs["int8_served"] is True
    assert done[True].values[1] == recorded[True]["latency"]["p50_ms"]

    registry = tmp_path / "registry"
    int8_run = next(d for d in study_run_dirs("tiny", storage)
                    if json.loads((d / "results.json").read_text())["latency"].get("int8"))
    script("promote.py", "--registry", registry, "--task", "cats_vs_dogs", "--run", int8_run, "--max-latency-ms",
           recorded[True]["latency"]["p50_ms"] + 1000)  # no --int8: the run was timed as its twin, so it comes along
    card = Registry(registry).card("cats_vs_dogs", 1)
    assert card["int8"]["served"] and card["latency"]["runtime"] == "onnxruntime int8"
    assert card["selected_by"]["value"] == check["val_accuracy_int8"]  # chosen as it answers: as the twin

    (tmp_path / "single").mkdir()
    single = sweep_files(tmp_path / "single", space={"int8": {"type": "categorical", "choices": [False, True]}})
    with pytest.raises(ConfigError, match="int8 is timed and scored in a sweep with objectives"):
        load_sweep(single)

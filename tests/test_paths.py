"""The one rule for outputs (petlab/paths.py): everything petlab places hangs off the project root
($PETLAB_HOME or the checkout), whichever folder a script is started from."""

import os
import subprocess
import sys

import pytest
import yaml

from petlab import paths
from tests.recipe import HEAD_ONLY
from tests.runs import REPO


def test_relative_locations_hang_off_the_project_root_and_absolute_ones_stay(tmp_path, monkeypatch):
    monkeypatch.setenv("PETLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PETLAB_REGISTRY_DIR", "elsewhere/registry")
    monkeypatch.chdir(tmp_path)
    assert paths.runs_root() == tmp_path / "home" / "runs"
    assert paths.registry_root() == tmp_path / "home" / "elsewhere" / "registry"
    assert paths.default_study_storage() == f"sqlite:///{tmp_path / 'home' / 'runs' / 'optuna.db'}"
    assert paths.runs_root(str(tmp_path / "abs")) == tmp_path / "abs"
    monkeypatch.delenv("PETLAB_HOME")
    assert paths.project_root() == REPO


@pytest.mark.slow
def test_a_run_a_sweep_and_a_promotion_started_elsewhere_land_under_the_project_root(tmp_path, shared, tiny):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PETLAB_HOME": str(home), "PETLAB_DATA_DIR": str(shared)}

    def script(name, *args):
        proc = subprocess.run([sys.executable, str(REPO / "experiments" / name), *map(str, args)], cwd=elsewhere,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    script("run.py", *tiny.argv("--epochs", "1", "--tracking", "none"))
    (run_dir,) = (home / "runs").iterdir()
    assert (run_dir / "results.json").is_file()

    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "base.yaml").write_text(yaml.safe_dump(tiny.shrink({**HEAD_ONLY, "train.epochs": 1}).yaml()))
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump({
        "study": "tiny", "base": "base.yaml", "trials": 1, "seed": 1,
        "space": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}}}))
    script("sweep.py", "--sweep", sweep_dir / "sweep.yaml", "--data-dir", tiny.data, "--tracking", "none")
    assert (home / "runs" / "optuna.db").is_file()
    assert len(list((home / "runs" / "sweeps" / "tiny").glob("*/results.json"))) == 1
    assert (home / "runs" / "reports" / "sweeps" / "tiny" / "trials.csv").is_file()  # a user's report: with the runs

    script("promote.py", "--task", "cats_vs_dogs", "--run", run_dir,
           "--images", shared / "cats_and_dogs_filtered" / "validation")
    assert (home / "models" / "registry" / "cats_vs_dogs" / "v1" / "card.json").is_file()
    assert list(elsewhere.iterdir()) == []  # nothing landed where the scripts were started

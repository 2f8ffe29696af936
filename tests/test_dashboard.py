"""make dashboard: optuna-dashboard serves a real study from the sweeps' storage, read back over HTTP."""

import socket
import subprocess
import sys
import time

import httpx
import optuna
import pytest

from petlab.search.storage import open_storage
from tests.runs import REPO, script


@pytest.mark.slow
def test_the_dashboard_serves_a_real_studys_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="lr_sweep", storage=open_storage(url), direction="maximize")
    for value in (0.91, 0.95, 0.93):
        trial = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
        study.tell(trial, value)
    # a two-objective study as sweep.py opens one (search/runner.py open_study): accuracy against latency
    from petlab.search.runner import open_study
    from petlab.search.space import SweepConfig, with_objective

    sweep = with_objective(SweepConfig(study="accuracy_latency", base=REPO / "experiments/configs/"
                                       "lite0_features_cats_vs_dogs.yaml", space={},
                                       objectives=["val_accuracy", "latency_ms"]), "val_accuracy")
    two = open_study(sweep, url, None)
    for values in ([0.97, 6.1], [0.99, 14.8], [0.96, 9.0]):
        trial = two.ask({"model.arch": optuna.distributions.CategoricalDistribution(["lite0", "lite2"])})
        two.tell(trial, values)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(REPO / "experiments/dashboard.py"), "--storage", url,
                             "--port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=2).json()["study_summaries"]
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()[-2000:]
                assert time.monotonic() < deadline, "the dashboard did not answer within 60 s"
                time.sleep(0.3)
        summary, two_summary = sorted(studies, key=lambda s: s["study_name"] != "lr_sweep")
        assert summary["study_name"] == "lr_sweep"
        detail = httpx.get(f"http://127.0.0.1:{port}/api/studies/{two_summary['study_id']}", timeout=10).json()
        assert detail["objective_names"] == ["val_accuracy", "latency_ms"]  # the page labels both objectives so
        assert two_summary["directions"] == ["maximize", "minimize"]
        # its front: (0.96, 9.0) is dominated by (0.97, 6.1), more accurate and faster
        assert sorted(tuple(t["values"]) for t in detail["best_trials"]) == [(0.97, 6.1), (0.99, 14.8)]
        detail = httpx.get(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=10).json()
        trials = detail["trials"]
        assert [t["state"] for t in trials] == ["Complete"] * 3
        assert sorted(t["values"][0] for t in trials) == [0.91, 0.93, 0.95]
        assert detail["best_trials"][0]["values"] == [0.95]
        assert httpx.get(f"http://127.0.0.1:{port}/dashboard", timeout=10).status_code == 200  # the page itself
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_no_storage_yet_is_one_clear_error(tmp_path):
    proc = script("dashboard.py", "--storage", f"sqlite:///{tmp_path / 'missing.db'}", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no sweep storage at")
    assert "Traceback" not in proc.stderr

"""Comet tracking of real runs: the offline archive's contents, no network attempts, the fallbacks."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from petlab.config import config_from_dict
from petlab.engine.experiment import run_experiment
from tests.imaging import make_imagefolder
from tests.recipe import TINY, Recipe
from tests.runs import REPO, only_run_dir

# Runs experiments/run.py under an audit hook that records every DNS lookup and socket connect.
AUDITED_RUN = """
import json, runpy, sys
attempts = []
def hook(event, args):
    if event in ("socket.getaddrinfo", "socket.connect"):
        attempts.append([event, repr(args[0] if event == "socket.getaddrinfo" else args[1])])
sys.addaudithook(hook)
sys.argv = ["experiments/run.py", *sys.argv[2:]]
try:
    runpy.run_path("experiments/run.py", run_name="__main__")
finally:
    open({out!r}, "w").write(json.dumps(attempts))
"""


def tracked_recipe(tmp_path) -> Recipe:
    """The tiny recipe for two epochs on generated photos, as every run here trains."""
    data = tmp_path / "data"
    make_imagefolder(data, {"train": 12, "val": 4, "test": 4})
    return Recipe(TINY).on(data).shrink({"train.epochs": 2})


def audited_run(tmp_path):
    """experiments/run.py in a child process under the audit hook, without the user's Comet settings."""
    out = tmp_path / "runs"
    argv = tracked_recipe(tmp_path).argv("--output-dir", out)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("COMET_")}
    command = [sys.executable, "-c", AUDITED_RUN.format(out=str(tmp_path / "network.json")), "-", *argv]
    proc = subprocess.run(command, cwd=REPO, env=environ, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(out)
    return run_dir, json.loads((run_dir / "results.json").read_text()), proc.stderr


def run_here(tmp_path, monkeypatch, capfd, caplog, env=None, **settings):
    """The same run in this process, for the tests a child process is not the point of: the user's Comet
    settings removed, `env` set; returns what it wrote to stderr and logged."""
    for key in ("COMET_API_KEY", "COMET_PROJECT_NAME", "COMET_WORKSPACE", "COMET_URL_OVERRIDE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    outcome = run_experiment(tracked_recipe(tmp_path).shrink(settings).config(output_dir=str(tmp_path / "runs")))
    assert outcome.exit_code == 0, capfd.readouterr().err[-3000:]
    said = capfd.readouterr().err + caplog.text
    return outcome.run_dir, json.loads((outcome.run_dir / "results.json").read_text()), said


def read_archive(path: Path) -> dict:
    """The offline archive as Comet would upload it: experiment.json plus its messages by type."""
    with zipfile.ZipFile(path) as archive:
        experiment = json.loads(archive.read("experiment.json"))
        messages = [json.loads(line) for line in archive.read("messages.json").decode().splitlines()]
        files = {name: archive.read(name) for name in archive.namelist()}
    by_type = {}
    for m in messages:
        by_type.setdefault(m["type"], []).append(m["payload"])
    return {"experiment": experiment, "messages": by_type, "files": files}


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    return audited_run(tmp_path_factory.mktemp("offline"))


@pytest.mark.slow
def test_offline_run_writes_an_archive_into_the_run_directory(offline_run):
    run_dir, results, stderr = offline_run
    tracking = results["tracking"]
    assert tracking["backend"] == "comet" and tracking["mode"] == "offline" and tracking["url"] is None
    archive = Path(tracking["archive"])
    assert archive.parent == run_dir / "comet" and archive.name == f"{tracking['key']}.01.zip"
    assert tracking["archives"] == [str(archive)]
    assert "comet upload" in stderr and str(archive) in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_offline_run_makes_no_network_attempt(offline_run, tmp_path_factory):
    run_dir, _, _ = offline_run
    attempts = json.loads((run_dir.parents[1] / "network.json").read_text())
    assert attempts == []


@pytest.mark.slow
def test_archive_holds_config_summary_metrics_figures_model_and_tags(offline_run):
    run_dir, results, _ = offline_run
    archive = read_archive(Path(results["tracking"]["archive"]))
    params = {}
    for p in archive["messages"]["parameter_msg"]:
        p = p.get("param") or p["params"]  # list values come as "params"
        params[p["paramName"]] = p["paramValue"]
    resolved = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text())).flat()
    assert set(resolved) <= set(params), set(resolved) - set(params)
    assert all(params[k] == v for k, v in resolved.items())
    assert params["dataset.classes"] == ["cat", "dog"] and params["dataset.size.train"] == 24
    assert params["preprocessing.image_size"] == 64

    uploads = archive["messages"]["file_upload"]
    texts = [archive["files"][u["file_path"]].decode() for u in uploads if u["upload_type"] == "text-sample"]
    assert any("Total params: 11,177,538" in t for t in texts)
    others = {o["key"]: o["value"] for o in archive["messages"]["log_other"]}
    assert others["params_total"] == 11_177_538 and others["mult_adds"] > 0
    assert others["git_commit"] == results["git"]["commit"] and "package.torch" in others

    metrics = [m["metric"] for m in archive["messages"]["metric_msg"]]
    per_epoch = {(m["metricName"], m["epoch"]) for m in metrics}
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_second", "epoch_seconds"):
        assert {(name, 1), (name, 2)} <= per_epoch, name
    assert {"batch_loss", "lr", "grad_norm", "test_accuracy_final", "val_f1_cat"} <= {m["metricName"] for m in metrics}
    final = next(m for m in metrics if m["metricName"] == "test_accuracy_final")
    assert final["metricValue"] == pytest.approx(results["test"]["accuracy"])

    kinds = {u["upload_type"] for u in uploads}
    assert {"confusion-matrix", "model-element", "visualization"} <= kinds
    matrix = next(u for u in uploads if u["upload_type"] == "confusion-matrix"
                  and u["additional_params"]["fileName"].startswith("val"))
    content = json.loads(archive["files"][matrix["file_path"]])
    assert content["labels"] == ["cat", "dog"] and content["matrix"] == results["val"]["confusion_matrix"]
    model = next(u for u in uploads if u["upload_type"] == "model-element")
    assert model["additional_params"]["groupingName"] == "petlab-cats-vs-dogs"
    assert len(archive["files"][model["file_path"]]) == (run_dir / "checkpoints/best.pt").stat().st_size
    images = {u["additional_params"]["figName"] for u in uploads if u["upload_type"] == "visualization"}
    assert {"confusion_matrix", "learning_curves", "top_losses"} <= images
    assert {"task:cats_vs_dogs", "arch:resnet18", "dataset:imagefolder"} <= set(archive["experiment"]["tags"])


def test_bad_key_without_network_falls_back_to_offline_and_says_so(tmp_path, monkeypatch, capfd, caplog):
    _, results, stderr = run_here(tmp_path, monkeypatch, capfd, caplog,
                                  env={"COMET_API_KEY": "not-a-real-key-0123456789"})
    assert results["status"] == "completed"
    assert results["tracking"]["mode"] == "offline" and Path(results["tracking"]["archive"]).is_file()
    assert "falling back to offline mode" in stderr


def test_tracking_none_writes_the_local_record_only_and_profile_writes_a_trace(tmp_path, monkeypatch, capfd,
                                                                               caplog):
    run_dir, results, stderr = run_here(tmp_path, monkeypatch, capfd, caplog,
                                        **{"tracking.backend": "none", "diagnostics.profile": True})
    assert results["tracking"] == {"backend": "none", "mode": "off", "key": None, "url": None}
    assert not (run_dir / "comet").exists()
    assert (run_dir / "metrics.csv").is_file() and results["test"]["accuracy"] >= 0
    trace = json.loads((run_dir / "profile" / "trace.json").read_text())
    assert any("conv" in event.get("name", "") for event in trace["traceEvents"])
    assert "Self CPU" in (run_dir / "profile" / "top_ops.txt").read_text() and "profiler: trace" in stderr


def test_archives_are_numbered_in_the_order_they_were_written(tmp_path):
    """comet_ml names a continued experiment's archive `<key>-<n>.zip`, which a shell glob sorts before
    `<key>.zip`: `comet upload runs/<id>/comet/*.zip` sent a promotion before the run it continues."""
    import os

    from petlab.tracking.comet import number_archives

    key = "0123456789abcdef0123456789abcdef"
    (tmp_path / f"{key}.zip").write_bytes(b"run")
    os.utime(tmp_path / f"{key}.zip", (1, 1))
    assert number_archives(tmp_path) == [tmp_path / f"{key}.01.zip"]
    (tmp_path / f"{key}-1.zip").write_bytes(b"resumed")
    os.utime(tmp_path / f"{key}-1.zip", (2, 2))
    (tmp_path / f"{key}-2.zip").write_bytes(b"promotion")
    os.utime(tmp_path / f"{key}-2.zip", (3, 3))
    number_archives(tmp_path)
    assert [p.read_bytes() for p in sorted(tmp_path.glob("*.zip"))] == [b"run", b"resumed", b"promotion"]


def test_a_metric_that_does_not_exist_is_not_logged_as_nan(tmp_path):
    """A breeds run's refit epochs (no validation split) logged NaN validation metrics: 64 warnings on upload."""
    import json
    import zipfile

    from petlab.tracking.comet import CometTracker

    os.environ.pop("COMET_API_KEY", None)
    tracker = CometTracker(tmp_path / "run", "petlab-test")
    tracker.log_metrics({"train_loss": 0.5, "val_loss": float("nan"), "val_accuracy": float("inf")}, epoch=1)
    tracker.end()
    with zipfile.ZipFile(tracker.archive()) as archive:
        messages = [json.loads(line) for line in archive.read("messages.json").decode().splitlines()]
    logged = {m["payload"]["metric"]["metricName"] for m in messages if (m["payload"].get("metric") or {})}
    assert "train_loss" in logged and not logged & {"val_loss", "val_accuracy"}

"""Speed defaults resolve per architecture and device; the throughput benchmark runs and reports."""

import json
import subprocess
import sys

import pytest
import torch

from petlab.cli import add_run_flags, overrides_from
from petlab.config import load_config
from petlab.engine.speed import native_bf16, speed_settings
from tests.runs import REPO


def test_auto_settings_become_the_measured_ones_and_explicit_ones_stay():
    cpu = torch.device("cpu")
    cfg = load_config(None, {"model.arch": "mobilenet_v2"})
    assert (cfg.train.precision, cfg.train.channels_last) == ("auto", None)
    resolved = speed_settings(cfg, cpu)
    assert resolved == {"train.precision": "bf16" if native_bf16(cpu) else "fp32", "train.channels_last": True}
    explicit = load_config(None, {"model.arch": "resnet18", "train.precision": "fp32", "train.channels_last": "false"})
    assert speed_settings(explicit, cpu) == {"train.precision": "fp32", "train.channels_last": False}


def test_boolean_flags_have_a_yes_and_a_no_form_and_unset_overrides_nothing():
    import argparse

    parser = argparse.ArgumentParser()
    add_run_flags(parser)
    assert overrides_from(parser.parse_args(["--channels-last"]))["train.channels_last"] is True
    assert overrides_from(parser.parse_args(["--no-channels-last"]))["train.channels_last"] is False
    assert overrides_from(parser.parse_args(["--no-augment"]))["data.augment"] is False
    assert "train.channels_last" not in overrides_from(parser.parse_args([]))
    # the generated flags still load: every value a flag yields is one the config accepts
    assert load_config(None, overrides_from(parser.parse_args(["--no-augment", "--no-channels-last"]))).data.augment \
        is False


@pytest.mark.slow
def test_the_throughput_benchmark_compares_both_loops_and_the_exports(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/train_throughput.py"), "--models", "resnet18",
                           "--warmup", "1", "--window", "1", "--windows", "1", "--repeats", "2", "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)["resnet18"]
    assert result["plain_img_s"] > 0 and result["petlab_img_s"] > 0
    assert result["ratio"] == result["petlab_img_s"] / result["plain_img_s"]
    assert result["peak_rss_mb"]["plain"] > 100 and result["peak_rss_mb"]["petlab"] > 100
    assert result["petlab_settings"]["channels_last"] is True  # resolved, as written to the run's config.yaml
    # eager and each export (model.pt2, model.ts, model.onnx), at batch 1 and batch 32
    assert all(v > 0 for v in result["inference"].values()) and len(result["inference"]) == 8
    assert {"onnx_batch_1_img_s", "onnx_batch_32_img_s"} <= set(result["inference"])


@pytest.mark.slow
def test_time_to_accuracy_runs_a_recipe_cold_and_reports_it(tmp_path):
    """The dog-breed recipe end to end (real photos, cold cache): the smallest one, about half a minute."""
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/time_to_accuracy.py"), "--recipe",
                           "lite0_features_breeds", "--output-dir", out, "--no-report", "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)["lite0_features_breeds"]
    assert result["dataset"] == "stanford-dogs-3breeds" and result["test_images"] == 81
    assert 0 < result["minutes"] < result["budget_minutes"]
    assert result["test_accuracy"] >= result["target"] and result["met"] is True
    run = json.loads((out / "lite0_features_breeds" / "runs").glob("*/results.json").__next__().read_text())
    assert run["feature_cache"] is True and run["test"]["accuracy"] == result["test_accuracy"]
    assert any((out / "lite0_features_breeds" / "cache").iterdir())  # it started from this empty cache

    again = subprocess.run([sys.executable, str(REPO / "benchmarks/time_to_accuracy.py"), "--recipe",
                            "lite0_features_breeds", "--output-dir", out, "--no-report"],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert again.returncode != 0 and "a cold start needs an empty --output-dir" in again.stderr

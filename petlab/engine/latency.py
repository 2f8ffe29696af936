"""A run's serving latency on this machine: what a two-objective sweep minimises and `promote.py --max-latency-ms`
chooses by.

The served runtime at batch 1, as the server answers one photo: the run's best.pt exported to ONNX, loaded on
ONNX Runtime (inference/model.py: LoadedModel, its preprocessing and test-time augmentation), one real photo of
the run's own validation split decoded once and answered `calls` times after a warm-up; the median (p50) and p95
in ms. The CPU it was measured on is recorded with it: a latency holds for that CPU only. results.json keeps it
under "latency".
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from petlab import rundir
from petlab.data.images import load_rgb
from petlab.engine.speed import cpu_model
from petlab.errors import ConfigError
from petlab.export.onnx import export_onnx
from petlab.inference.model import LoadedModel
from petlab.inference.runtime import OnnxSession

LATENCY = "latency_ms"  # a sweep's second objective: the served p50 at batch 1, lower is better
CALLS, WARMUP = 50, 5


def served_latency(model: torch.nn.Module, pre, card: dict, photo, calls: int = CALLS) -> dict:
    """p50 and p95 ms of answering `photo` (an RGB image) at batch 1 on ONNX Runtime, as served."""
    with tempfile.TemporaryDirectory(prefix="petlab-latency-") as tmp:
        example = torch.zeros(2, 3, pre.image_size, pre.image_size)
        session = OnnxSession(export_onnx(model.float().eval(), example, Path(tmp) / "model.onnx"))
        served = LoadedModel(card.get("task", ""), "latency", 0, card, "onnx", session, pre)
        for _ in range(WARMUP):
            served.probabilities([photo])
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            served.probabilities([photo])
            times.append(1000 * (time.perf_counter() - start))
    return {"p50_ms": statistics.median(times), "p95_ms": float(np.percentile(times, 95)), "calls": calls,
            "batch": 1, "runtime": "onnxruntime fp32", "cpu": this_cpu(), "threads": torch.get_num_threads()}


def this_cpu() -> str:
    """The CPU a latency holds for: its name and the widest vector unit PyTorch found (an AMD EPYC with
    AVX512 and one with AVX2 alone give the same name and different times)."""
    return f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()})"


def measure_run_latency(run_dir: Path, calls: int = CALLS) -> dict:
    """The run's served latency here, recorded in its results.json ("latency") and returned."""
    trained = rundir.load_model(run_dir)
    predictions = rundir.read_predictions(run_dir) or {}
    files = (predictions.get("val") or predictions.get("test") or {}).get("files") or []
    if not files:
        raise ConfigError(f"{run_dir}: no validation or test photo recorded (predictions.npz) to time an answer on")
    results = rundir.read_results(run_dir)
    card = {"classes": trained.classes, "tta": results.get("tta", "none"), "task": results.get("task", "")}
    latency = served_latency(trained.model, trained.preprocessing, card, load_rgb(files[0]), calls)
    rundir.write_results(run_dir, {**results, "latency": latency})
    return latency


def latency_here(results: dict) -> float | None:
    """A run's recorded p50 when it was measured on this CPU, else None (another CPU's figure does not hold)."""
    latency = results.get("latency") or {}
    return latency.get("p50_ms") if latency.get("cpu") == this_cpu() else None

"""A run's serving latency on this machine: what a two-objective sweep minimises and `promote.py --max-latency-ms`
chooses by.

The served runtime at batch 1, as the server answers one photo: the run's best.pt exported to ONNX, loaded on
ONNX Runtime (inference/model.py: LoadedModel, its preprocessing and test-time augmentation), with the "not a pet"
check the server would run beside it (a model without ImageNet's own backbone pays a second pass), one real photo of
the run's own validation split decoded once and answered `calls` times after a warm-up; the median (p50) and p95
in ms. The CPU it was measured on is recorded with it: a latency holds for that CPU only. results.json keeps it
under "latency".
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from petlab import rundir
from petlab.data.images import load_rgb
from petlab.engine.context import load_run_splits
from petlab.engine.speed import cpu_model
from petlab.errors import ConfigError, ExportError
from petlab.export.int8 import served, write_int8
from petlab.export.onnx import export_onnx
from petlab.inference.model import MODEL_ONNX, PET_VIEW_ONNX, int8_file
from petlab.inference.pet import OWN_BACKBONE_THRESHOLDS, SEPARATE_VIEW_FILE, VIEW_ARCH, SeparateView
from petlab.models.pet_view import OwnBackboneView, export_separate_view, own_backbone_head

LATENCY = "latency_ms"  # a sweep's second objective: the served p50 at batch 1, lower is better
CALLS, WARMUP = 50, 5


def served_latency(model: torch.nn.Module, arch: str, pre, card: dict, photo, calls: int = CALLS,
                   int8_check: Callable[[Path, dict], dict] | None = None) -> dict:
    """p50 and p95 ms of answering `photo` (an RGB image) at batch 1 on ONNX Runtime as the server does, its "not a
    pet" check included: from the model's own pass where its backbone is ImageNet's (pet_view.onnx), else the
    separate ImageNet view's pass beside it (what promotion would give this model, registry/promote.py).
    int8_check(folder, card): quantises and checks the files exported into `folder` (export/int8.py write_int8)
    and returns its entry; where the twin passes, it is what is timed, as the server would answer with it."""
    model = model.float().eval()
    with tempfile.TemporaryDirectory(prefix="petlab-latency-") as tmp:
        tmp = Path(tmp)
        example = torch.zeros(2, 3, pre.image_size, pre.image_size)
        export_onnx(model, example, tmp / MODEL_ONNX)
        separate = pet_file = None
        if (head := own_backbone_head(model, arch, pre.image_size)) is not None:
            view = OwnBackboneView(model, arch, head, len(card["classes"]))
            pet_file = export_onnx(view, example, tmp / PET_VIEW_ONNX, ("logits", "pet_probability")).name
            card = {**card, "not_a_pet": {"file": pet_file, "onnx": pet_file,
                                          "threshold": OWN_BACKBONE_THRESHOLDS[(arch, pre.image_size)]}}
            pet_check = "from the model's own pass"
        else:
            export_separate_view([photo] * 3, tmp / SEPARATE_VIEW_FILE)
            separate, pet_check = SeparateView(tmp / SEPARATE_VIEW_FILE), f"a separate ImageNet {VIEW_ARCH} pass"
        try:
            check = int8_check(tmp, card) if int8_check is not None else None
        except ExportError as exc:  # a twin that cannot be made is not served: the fp32 files are what is timed
            check = {"served": False, "why": str(exc), "val_top1_agreement": None}
        int8 = check is not None and check["served"]
        answering = served(tmp, card, pre, int8_file(MODEL_ONNX) if int8 else MODEL_ONNX,
                           (int8_file(pet_file) if int8 else pet_file) if pet_file else None)

        def answer():
            if answering.probabilities_and_pet([photo])[1] is None:
                separate.pet_probability([photo])

        times = [1000 * s for s in call_seconds(answer, calls, WARMUP)]
    return {"p50_ms": statistics.median(times), "p95_ms": float(np.percentile(times, 95)), "calls": calls,
            "batch": 1, "runtime": f"onnxruntime {'int8' if int8 else 'fp32'}", "not_a_pet": pet_check,
            "cpu": this_cpu(), "threads": torch.get_num_threads(), **({"int8": check} if check is not None else {})}


def call_seconds(fn, calls: int, warmup: int) -> list[float]:
    """The seconds each of `calls` calls of fn() took, after `warmup` untimed ones (the benchmarks time with it too)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def this_cpu() -> str:
    """The CPU a latency holds for: its name and the widest vector unit PyTorch found (an AMD EPYC with
    AVX512 and one with AVX2 alone give the same name and different times)."""
    return f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()})"


def measure_run_latency(run_dir: Path, calls: int = CALLS, int8: bool = False) -> dict:
    """The run's served latency here, recorded in its results.json ("latency") and returned. int8: quantise it as
    `promote.py --int8` would (calibrated on its training photos) and check the twin on its validation photos only
    (a sweep never looks at test); where the twin passes, the twin is timed and the entry's "int8" says so."""
    trained = rundir.load_model(run_dir)
    predictions = rundir.read_predictions(run_dir) or {}
    files = (predictions.get("val") or predictions.get("test") or {}).get("files") or []
    if not files:
        raise ConfigError(f"{run_dir}: no validation or test photo recorded (predictions.npz) to time an answer on")
    results = rundir.read_results(run_dir)
    card = {"classes": trained.classes, "tta": results.get("tta", "none"), "task": results.get("task", "")}
    int8_check = None
    if int8:
        train = load_run_splits(trained.cfg).train
        if not predictions.get("val"):
            raise ConfigError(f"{run_dir}: no validation predictions to check an int8 twin on")

        def int8_check(folder: Path, card: dict) -> dict:
            return write_int8(folder, card, trained.preprocessing, train, {"val": predictions["val"]},
                              trained.cfg.seed)
    latency = served_latency(trained.model, trained.cfg.model.arch, trained.preprocessing, card, load_rgb(files[0]),
                             calls, int8_check)
    rundir.write_results(run_dir, {**results, "latency": latency})
    return latency


def latency_here(results: dict) -> float | None:
    """A run's recorded p50 when it was measured on this CPU with the "not a pet" check, else None (another CPU's
    figure does not hold, and one without the check is not what the server answers in)."""
    latency = results.get("latency") or {}
    return latency.get("p50_ms") if latency.get("cpu") == this_cpu() and latency.get("not_a_pet") else None

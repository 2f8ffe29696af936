"""Fast on every CPU: precision chosen by the machine (bf16 only where native), predictions on ONNX Runtime
checked against eager, and a signal that ends a run within seconds, even mid-evaluation."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from petlab.config import load_config
from petlab.data.cache import decode_split
from petlab.data.images import load_rgb
from petlab.engine.context import run_preprocessing
from petlab.engine.features import backbone_features
from petlab.engine.speed import BF16_SWITCH, native_bf16, speed_settings
from petlab.export.onnx import ONNX_TOLERANCE, RUNTIME_SWITCH
from petlab.inference.model import load_version
from petlab.models import build_model
from petlab.registry import Registry
from petlab.registry.torch_fallback import load_weights_only
from petlab.serving import ServedModels, ServingError
from tests.imaging import make_imagefolder
from tests.recipe import SEED_CNN
from tests.runs import REPO, only_run_dir, script


@pytest.mark.slow
def test_explicit_bf16_where_it_would_be_emulated_is_refused_before_any_work(tiny, tmp_path, monkeypatch):
    data = make_imagefolder(tmp_path / "data", {"train": 4})
    env = {**os.environ, BF16_SWITCH: "0"}  # this process's CPU as one without native bf16
    proc = subprocess.run([sys.executable, str(REPO / "experiments/run.py"),
                           *tiny.on(data).argv("--precision", "bf16", "--output-dir", tmp_path / "runs")],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "no native bf16" in errors[0] and "--precision auto" in errors[0] and "50x" in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()  # no run was even started

    monkeypatch.setenv(BF16_SWITCH, "0")  # auto resolves to fp32 there, for every architecture
    for arch in ("custom_cnn", "efficientnet_lite0", "mobilenet_v2"):
        assert speed_settings(load_config(None, {"model.arch": arch}), torch.device("cpu"))["train.precision"] == "fp32"
    monkeypatch.delenv(BF16_SWITCH)
    expected = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    assert speed_settings(load_config(None, {"model.arch": "custom_cnn"}), torch.device("cpu"))["train.precision"] \
        == expected


def test_bf16_autocast_trains_a_tiny_net_close_to_fp32():
    """The one test that runs bf16 whatever the CPU: on tiny tensors, where even emulation is instant."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    x, y = torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), net(x), atol=3e-2, rtol=3e-2)
    nn.functional.cross_entropy(low.float(), y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_features_from_onnx_runtime_equal_eager_features_on_real_photos(shared, tmp_path, monkeypatch, caplog):
    cfg = load_config(None, {"model.arch": "efficientnet_lite0", "model.pretrained": True,
                             "model.freeze_backbone": True, "data.augment": False, "train.batch_size": 4,
                             "train.precision": "fp32", "train.channels_last": True})
    photos = sorted((shared / "cats_and_dogs_filtered" / "validation" / "cats").glob("*.jpg"))[:6]
    pre = run_preprocessing(cfg)
    decoded = decode_split([(p, 0) for p in photos], pre, tmp_path / "decoded", "val")
    model, _ = build_model("efficientnet_lite0", 2, pretrained=True)
    cache = tmp_path / "cache"
    fast = backbone_features(cfg, model, decoded, pre, "val", cache, torch.device("cpu"))
    (onnx,) = (cache / "features").glob("backbone-*.onnx")  # exported once, kept for the next extraction
    monkeypatch.setenv(RUNTIME_SWITCH, "torch")
    eager = backbone_features(cfg, model, decoded, pre, "val", cache, torch.device("cpu"))
    assert fast.shape == eager.shape == (6, 1, 1280)
    np.testing.assert_allclose(fast, eager, **ONNX_TOLERANCE)

    # a damaged cached export is exported again, and the features are still the eager ones
    monkeypatch.delenv(RUNTIME_SWITCH)
    for cached in (cache / "features").glob("*.npy"):
        cached.unlink()
    onnx.write_bytes(b"not an onnx file")
    again = backbone_features(cfg, model, decoded, pre, "val", cache, torch.device("cpu"))
    np.testing.assert_allclose(again, eager, **ONNX_TOLERANCE)
    assert "exporting it again" in caplog.text and onnx.stat().st_size > 1_000_000


@pytest.mark.slow
def test_the_server_answers_from_model_onnx_and_refuses_a_version_where_it_is_missing_or_corrupt(
        promoted_registry, shared, tmp_path):
    registry = tmp_path / "registry"
    shutil.copytree(promoted_registry, registry)
    photo = load_rgb(sorted((shared / "cats_and_dogs_filtered" / "validation" / "dogs").glob("*.jpg"))[0])
    served = ServedModels(Registry(registry))
    answer = served.classify(served.model("cats_vs_dogs"), photo, 2)
    assert answer["model"]["format"] == "onnx" and answer["predictions"][0]["label"] == "dog"
    loaded = load_version(Registry(registry), "cats_vs_dogs", 1)
    assert (loaded.fmt, loaded.pet_fmt) == ("onnx", "onnx")

    version = registry / "cats_vs_dogs" / "v1"
    (version / "model.onnx").write_bytes(b"\x00garbage")  # corrupt
    (version / "pet_view.onnx").unlink()  # missing
    fallback = load_version(Registry(registry), "cats_vs_dogs", 1, fallback=load_weights_only)
    # the weights-only state dict (its own pet view rebuilt from it), never model.pt2 or pet_view.pt2 (loading
    # those runs code): named as refused
    assert (fallback.fmt, fallback.pet_fmt) == ("eager", "eager")
    assert "runs code" in fallback.refused["model.pt2"] and "runs code" in fallback.refused["pet_view.pt2"]
    answer = ServedModels(Registry(registry)).classify(fallback, photo, 2)
    assert answer["model"]["format"] == "eager" and answer["predictions"][0]["label"] == "dog"
    for a, b in zip(fallback.probabilities_and_pet([photo]), loaded.probabilities_and_pet([photo])):
        torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(b), **ONNX_TOLERANCE)
    # the server takes no fallback: the version is refused, and health says why
    server = ServedModels(Registry(registry))
    with pytest.raises(ServingError) as refused:
        server.model("cats_vs_dogs")
    assert refused.value.status == 503 and "only ONNX is served" in refused.value.message
    assert str(registry) not in refused.value.message  # no path of this machine
    health = server.health()["models"]["cats_vs_dogs"]
    assert health["format"] == "not served" and "model.onnx" in health["not_served"]


@pytest.mark.slow
def test_sigterm_during_the_final_evaluation_ends_the_run_within_seconds_and_resume_finishes_it(tiny, tmp_path):
    # the seed's CNN at 224 px: a few hundred evaluation photos take far longer than the 10 s allowed
    data = make_imagefolder(tmp_path / "data", {"train": 4, "val": 100, "test": 100})
    args = tiny.shrink({**SEED_CNN, "train.batch_size": 4}).on(data).argv("--epochs", "1", "--tracking", "none")
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, str(REPO / "experiments/run.py"), *map(str, args), "--output-dir",
                             str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # the epoch is logged: the final evaluation starts
        logs = list(out.glob("*/train.log")) if out.exists() else []
        if logs and "epoch 1/1" in logs[0].read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    time.sleep(1.0)  # well inside evaluating best.pt
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert took < 30 and proc.returncode == 130, (took, stderr[-2000:])  # not the whole evaluation; any machine
    run_dir = only_run_dir(out)
    partial = json.loads((run_dir / "results.json").read_text())
    assert partial["status"] == "interrupted" and partial["epochs_completed"] == 1 and partial["test"] is None
    assert "the final evaluation is left" in stderr and "--resume" in stderr

    script("run.py", "--resume", run_dir)
    resumed = json.loads((run_dir / "results.json").read_text())
    assert resumed["status"] == "completed" and resumed["test"]["n"] == 200 and resumed["epochs_completed"] == 1


@pytest.mark.slow
def test_evaluate_predicts_on_onnx_runtime_and_says_so(tiny, tmp_path):
    data = make_imagefolder(tmp_path / "data", {"train": 8, "val": 2, "test": 4})
    script("run.py", *tiny.on(data).argv("--epochs", "1", "--output-dir", tmp_path / "runs", "--tracking", "none"))
    run_dir = only_run_dir(tmp_path / "runs")

    def evaluate(**env):
        return json.loads(script("evaluate.py", run_dir, "--data-dir", data, env={**os.environ, **env}).stdout)

    # as a CPU without native bf16 evaluates: fp32, on ONNX Runtime; and on PyTorch when told so
    fast, eager = evaluate(**{BF16_SWITCH: "0"}), evaluate(**{BF16_SWITCH: "0", RUNTIME_SWITCH: "torch"})
    assert fast["runtime"] == "onnxruntime" and eager["runtime"] == "torch"
    assert fast["accuracy"] == eager["accuracy"] and fast["n"] == eager["n"] == 8
    assert fast["loss"] == pytest.approx(eager["loss"], rel=1e-4)
    # a ResNet keeps PyTorch where bf16 is native: its bf16 measured faster than ONNX Runtime's fp32 there
    assert evaluate()["runtime"] == ("torch" if native_bf16(torch.device("cpu")) else "onnxruntime")

"""Speed settings chosen by the machine, not the recipe: `train.precision: auto` and
`train.channels_last: null` become the measured setting for the architecture on this device before a
run starts (and are written, resolved, to the run's config.yaml). And where a model only predicts
(evaluation, validation, the feature cache), `predicting_runtime` says whether ONNX Runtime or PyTorch runs it.

The rules, with their evidence (each figure names its CPU; training: benchmarks/train_throughput.py,
inference: benchmarks/inference_throughput.py, fp32 outputs of both runtimes equal within 2e-5):

| device | training | predicting |
|---|---|---|
| CPU with native bf16 (AVX512-BF16, AMX) | bf16 + channels_last | Lites: ONNX Runtime fp32; others: torch bf16 |
| CPU without native bf16 (AVX2 only) | fp32 + channels_last; bf16 refused | ONNX Runtime fp32 |
| CUDA | bf16 where supported, else fp32 | PyTorch |

- AMD EPYC with AVX512-BF16 (2 cores), training at batch 32: MobileNetV2 13.6 fp32 -> 25.3 channels_last
  -> 36.4 img/s bf16 + channels_last; EfficientNet-Lite0 18.1 -> 22.3; ResNet18 15.1 -> 35.2 (2.3x).
  Inference at batch 64 (img/s, eager fp32 / eager bf16 / ONNX Runtime fp32), 2026-12-02: Lite0 24.2 /
  78.3 / 130.2, Lite0's backbone (the feature cache) 19.2 / 73.4 / 164.7, Lite2 10.4 / 39.7 / 47.3,
  ResNet18 40.2 / 87.6 / 48.4, custom CNN 3.9 / 9.1 / 5.1. Hence ArchSpec.onnx_over_bf16 for the Lites only.
- AMD EPYC Zen 2 (AVX2, no native bf16; measured by the issue's reporter, 2 cores): bf16 is emulated,
  about 50x slower (the custom CNN's first training batch of 32 took 644 s), so fp32. Inference at batch
  64, eager fp32 channels_last / ONNX Runtime: Lite0 23.5 / 93.9 img/s (4.0x), Lite2 11.2 / 45.6 (4.1x);
  batch 1: 35.7 / 15.4 ms and 62.9 / 28.1 ms. The fp32 column above is the same path on the bf16 EPYC.
- CUDA: by reasoning, not measured here (no GPU): tensor cores make bf16 the fast path where they have
  it, and ONNX Runtime's CUDA provider is not installed, so PyTorch predicts.

PETLAB_NATIVE_BF16=0 makes this process treat the device as one without native bf16 (what a laptop
runs), for measuring the fp32 paths and for running the suite as such a machine would.
"""

from __future__ import annotations

import os
from functools import cache

import torch

from petlab.config import Config
from petlab.errors import ConfigError
from petlab.export.onnx import runtime
from petlab.inference.runtime import cpu_model  # noqa: F401 - a machine fact the server reads too (no torch)
from petlab.models import ARCHS

BF16_SWITCH = "PETLAB_NATIVE_BF16"  # "0": behave as a device without native bf16


class BF16Unavailable(ConfigError):
    """bf16 was asked for on a device that would emulate it."""


def native_bf16(device: torch.device) -> bool:
    if os.environ.get(BF16_SWITCH, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


@cache
def machine(device: torch.device) -> dict:
    """What every figure of a run was measured on: results.json and the tracker record it."""
    facts = {"device": device.type, "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
             "native_bf16": native_bf16(device), "threads": torch.get_num_threads(), "torch": torch.__version__}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"this CPU ({cpu_model()})"


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse, before any work, a precision this device would only emulate."""
    if precision == "bf16" and not native_bf16(device):
        raise BF16Unavailable(
            f"train.precision bf16: {device_name(device)} has no native bf16 "
            f"({'the GPU does not support it' if device.type == 'cuda' else 'no AVX512-BF16 or AMX'}), so PyTorch "
            "would emulate it, about 50x slower than fp32; use --precision auto (fp32 here)")


def predicting_precision(precision: str, device: torch.device) -> str:
    """The precision to predict in with a trained run's weights (fp32 either way) on this device: the bf16
    a run chose where it trained becomes fp32 where bf16 would be emulated."""
    return "fp32" if precision == "bf16" and not native_bf16(device) else precision


def predicting_runtime(arch: str, precision: str, device: torch.device) -> str:
    """"onnxruntime" or "torch": what predicts with a run's weights here (evaluation, feature extraction)."""
    return runtime(device, predicting_precision(precision, device), ARCHS[arch].onnx_over_bf16)


def speed_settings(cfg: Config, device: torch.device) -> dict:
    """The resolved {"train.precision", "train.channels_last"}: `auto` and unset become the
    architecture's measured setting for the device; explicit values stay (bf16 only where native)."""
    spec = ARCHS[cfg.model.arch]
    precision = cfg.train.precision
    check_precision(precision, device)
    if precision == "auto":
        precision = "bf16" if spec.bf16 and native_bf16(device) else "fp32"
    channels_last = spec.channels_last if cfg.train.channels_last is None else cfg.train.channels_last
    return {"train.precision": precision, "train.channels_last": channels_last}

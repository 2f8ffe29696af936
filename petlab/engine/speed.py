"""Speed settings chosen by measurement: `train.precision: auto` and `train.channels_last: null`
become the architecture's measured setting for the device before a run starts (and are written,
resolved, to the run's config.yaml).

Measured on this project's 2-core AVX512-BF16 CPU, training images/s on the shared cats-vs-dogs
photos at batch 32 (benchmarks/train_throughput.py): MobileNetV2 13.6 fp32 -> 25.3 channels_last
-> 36.4 bf16 + channels_last; EfficientNet-Lite0 18.1 channels_last -> 22.3 bf16 + channels_last;
ResNet18 15.1 -> 35.2 (2.3x) in a bare compute loop, the custom CNN 2.3x in the engine. So,
unlike the folklore that bf16 slows depthwise nets on CPUs, bf16 autocast + channels_last is the
default for every convnet here -- but only where the CPU has native bf16 (oneDNN says so);
elsewhere bf16 is emulated and slow.
"""

from __future__ import annotations

import torch

from petlab.config import Config
from petlab.models import ARCHS


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def speed_settings(cfg: Config, device: torch.device) -> dict:
    """The resolved {"train.precision", "train.channels_last"}: `auto` and unset become the
    architecture's measured setting for the device; explicit values stay."""
    spec = ARCHS[cfg.model.arch]
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if spec.bf16 and native_bf16(device) else "fp32"
    channels_last = spec.channels_last if cfg.train.channels_last is None else cfg.train.channels_last
    return {"train.precision": precision, "train.channels_last": channels_last}

"""What every part of the engine does with a batch: seed, place, normalise, autocast, predict.

The Trainer, cross-validation, the feature cache and evaluate.py all share these, so they live
apart from the training loop.
"""

from __future__ import annotations

import os
import random
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from petlab.data.transforms import Preprocessing
from petlab.progress import progress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when there is one. Under torchrun each process takes the GPU of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            from petlab.errors import ConfigError

            raise ConfigError("train.device is 'cuda' but no CUDA device is available (use auto or cpu)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def prepare_batch(images: torch.Tensor, pre: Preprocessing | None, device: torch.device, channels_last: bool):
    """uint8 images -> the normalised float batch; with pre None the batch is cached features, used as they are."""
    if pre is None:
        return images.to(device, non_blocking=True)
    x = pre.normalize(images.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def batches_per_epoch(loader, limit_batches: int | None) -> int:
    """--limit-batches caps every split's batches per epoch (smoke runs)."""
    return min(len(loader), limit_batches) if limit_batches else len(loader)


def tta_views(x: torch.Tensor, features: bool, tta: str) -> list[torch.Tensor]:
    """The inputs whose predictions are averaged. Images: the batch, and its mirror with tta "flip".
    Cached features come as (B, views, F) with the mirror's features second (features.py)."""
    if features:
        return [x[:, v] for v in range(x.shape[1] if tta == "flip" else 1)]
    return [x, x.flip(3)] if tta == "flip" else [x]


@torch.inference_mode()
def predict_loader(model: nn.Module, loader, pre: Preprocessing | None, device: torch.device,
                   precision: str = "fp32", channels_last: bool = False, limit_batches: int | None = None,
                   criterion=None, desc: str = "eval", tta: str = "none") -> tuple[np.ndarray, np.ndarray, float]:
    """targets, class probabilities (N, classes) and mean loss over (at most limit_batches of) a loader.

    pre None: the loader yields cached features (B, views, F). With tta "flip" the softmax of each
    image and of its mirror are averaged, and the loss is the negative log of that average. Losses
    and probabilities stay on the device until the end: one host sync per split, not per batch."""
    model.eval()
    criterion = criterion or nn.CrossEntropyLoss()
    steps = batches_per_epoch(loader, limit_batches)
    targets, probs, losses = [], [], []
    for step, (images, y) in enumerate(progress(loader, total=steps, desc=desc, unit="batch", leave=False)):
        if step >= steps:
            break
        x = prepare_batch(images, pre, device, channels_last)
        with autocast(device, precision):
            logits = [model(view).float() for view in tta_views(x, pre is None, tta)]
        y = y.to(device, non_blocking=True)
        if len(logits) == 1:
            p = logits[0].softmax(1)
            losses.append(criterion(logits[0], y) * len(y))
        else:
            p = torch.stack([v.softmax(1) for v in logits]).mean(0)
            losses.append(nn.functional.nll_loss(p.clamp_min(1e-12).log(), y, reduction="sum"))
        targets.append(y)
        probs.append(p)
    if not targets:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), 0.0
    t, p = torch.cat(targets).cpu().numpy(), torch.cat(probs).cpu().numpy()
    return t, p, float(torch.stack(losses).double().sum()) / max(len(t), 1)

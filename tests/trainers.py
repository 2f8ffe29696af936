"""A Trainer on generated images, built the way a run builds one (for tests that need the loop itself)."""

from __future__ import annotations

import torch

from petlab.config import load_config
from petlab.engine.batches import seed_everything
from petlab.engine.context import decode_splits, load_run_splits, run_preprocessing
from petlab.engine.experiment import image_loaders
from petlab.engine.trainer import Trainer
from petlab.models import build_model
from petlab.paths import cache_root

SIZE = 32


def tiny_trainer(run_dir, data, model=None, tracker=None, **overrides) -> Trainer:
    """resnet18 at 32 px, batch 8, fp32/NCHW (what the diagnostics rules were calibrated on)."""
    cfg = load_config(overrides={"model.arch": "resnet18", "data.image_size": SIZE, "data.data_dir": str(data),
                                 "train.batch_size": 8, "train.lr": 1e-3, "train.optimizer": "adamw",
                                 "train.epochs": 3, "train.threads": 2,
                                 # The rules were calibrated on fp32/NCHW. Measured: with channels_last this
                                 # 8-image-batch toy run spikes in epoch 4 and ends at val 0.5 (fp32 or bf16).
                                 "train.precision": "fp32", "train.channels_last": False, **overrides})
    splits, pre = load_run_splits(cfg), run_preprocessing(cfg)
    decoded = decode_splits(splits, pre, cache_root(cfg.data.cache_dir))
    seed_everything(cfg.seed)
    model = model if model is not None else build_model("resnet18", len(splits.classes))[0]
    return Trainer(cfg, model, pre, image_loaders(cfg, pre, decoded), run_dir, splits.classes,
                   device=torch.device("cpu"), tracker=tracker)

"""A Trainer on generated images, built the way a run builds one (for tests that need the loop itself)."""

from __future__ import annotations

import torch

from petlab.engine.batches import seed_everything
from petlab.engine.context import decode_splits, load_run_splits, run_preprocessing
from petlab.engine.experiment import image_loaders
from petlab.engine.trainer import Trainer
from petlab.models import build_model
from petlab.paths import cache_root
from tests.recipe import TINY, Recipe

SIZE = 32


def tiny_trainer(run_dir, data, model=None, tracker=None, **overrides) -> Trainer:
    """The tiny recipe at 32 px, lr 1e-3, 3 epochs, fp32/NCHW (what the diagnostics rules were calibrated on)."""
    cfg = Recipe(TINY).on(data).shrink({"data.image_size": SIZE, "train.lr": 1e-3, "train.epochs": 3,
                                        # The rules were calibrated on fp32/NCHW. Measured: with channels_last
                                        # this 8-image-batch toy run spikes in epoch 4 and ends at val 0.5
                                        # (fp32 or bf16).
                                        "train.precision": "fp32", "train.channels_last": False}).config(**overrides)
    splits, pre = load_run_splits(cfg), run_preprocessing(cfg)
    decoded = decode_splits(splits, pre, cache_root(cfg.data.cache_dir))
    seed_everything(cfg.seed)
    model = model if model is not None else build_model("resnet18", len(splits.classes))[0]
    return Trainer(cfg, model, pre, image_loaders(cfg, pre, decoded), run_dir, splits.classes,
                   device=torch.device("cpu"), tracker=tracker)

"""Frozen-backbone feature cache: head-only training without running the backbone every epoch.

When the backbone is frozen for the whole run and training images are not augmented, every
epoch would push the same pixels through the same backbone. So each image's features are
computed once, stored under the cache root keyed by (architecture, weights, preprocessing,
runtime, images), and the head trains on them: a sweep's head-only trials then cost seconds.

On a CPU the features come from ONNX Runtime (export/onnx.py; benchmarks/inference_throughput.py
measures it several times faster than PyTorch there): the headless backbone is exported once per
(architecture, weights, image size) into the cache, and checked against the eager backbone (fp32) on
the first batch of every extraction before any feature is kept (CheckedOnnx: a file that fails to load
or to agree is exported again once; if that fails too, the eager backbone computes the features).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from petlab.config import Config
from petlab.data.cache import DecodedImages
from petlab.data.loaders import make_loader, train_order
from petlab.data.transforms import Preprocessing
from petlab.engine.batches import autocast, prepare_batch
from petlab.engine.speed import predicting_runtime
from petlab.export.onnx import CheckedOnnx
from petlab.fileio import atomic_write
from petlab.models import ARCHS
from petlab.progress import progress

log = logging.getLogger(__name__)
FEATURES_FORMAT = 2  # 2: (N, views, F), the mirror image's features second
ONNX_BACKBONE_FORMAT = 1


def uses_feature_cache(cfg: Config) -> bool:
    m = cfg.model
    return m.freeze_backbone and m.unfreeze_at is None and not cfg.data.augment


def feature_views(cfg: Config) -> int:
    """2 when mirror images are needed too (training on flips, or flip test-time augmentation), else 1."""
    return 2 if cfg.data.feature_flips or cfg.train.tta == "flip" else 1


def weights_identity(cfg: Config) -> str:
    """What the backbone's weights are, for the cache key: a file's content stamp, or the pretrained source."""
    if cfg.model.weights:
        st = os.stat(cfg.model.weights)
        return f"file:{Path(cfg.model.weights).resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return f"pretrained:{cfg.model.arch}" if cfg.model.pretrained else f"random:{cfg.model.arch}:seed{cfg.seed}"


@contextmanager
def without_head(model: nn.Module, head: str):
    """The model with its head swapped for Identity, so a forward pass returns the head's input."""
    parent_name, _, child = head.rpartition(".")
    parent = model.get_submodule(parent_name)  # "" is the model itself
    original = model.get_submodule(head)
    setattr(parent, child, nn.Identity())  # also right for Sequential indices such as "classifier.1"
    try:
        yield model
    finally:
        setattr(parent, child, original)


def extraction_identity(cfg: Config, device: torch.device) -> list:
    """What computes the features, for the cache key: ONNX Runtime in fp32, or PyTorch at the run's settings."""
    if predicting_runtime(cfg.model.arch, cfg.train.precision, device) == "onnxruntime":
        return ["onnxruntime", "fp32"]
    return ["torch", cfg.train.precision, cfg.train.channels_last]


def backbone_file(cfg: Config, image_size: int, cache_dir: Path) -> Path:
    """Where the headless backbone's ONNX export is cached: one per architecture, weights and image size."""
    identity = [ONNX_BACKBONE_FORMAT, cfg.model.arch, weights_identity(cfg), image_size]
    return cache_dir / "features" / f"backbone-{hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]}.onnx"


@torch.inference_mode()
def backbone_features(cfg: Config, model: nn.Module, decoded: DecodedImages, pre: Preprocessing, split: str,
                      cache_dir: Path, device: torch.device) -> np.ndarray:
    """(N, views, F) float32 features of the eval crops of `decoded` (and of their mirror images when
    feature_views is 2), from the cache when already computed."""
    t = cfg.train
    views = feature_views(cfg)
    identity = [FEATURES_FORMAT, cfg.model.arch, weights_identity(cfg), pre.to_dict(),
                *extraction_identity(cfg, device), decoded.key, views]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]
    path = cache_dir / "features" / f"{key}.npy"
    if path.is_file():
        log.info("features (%s): cached %s", split, path.name)
        return np.load(path)
    loader = make_loader(decoded, pre, False, cfg.train.eval_batch(), cfg.data.num_workers)
    model.eval()
    chunks = []
    with without_head(model, ARCHS[cfg.model.arch].head) as backbone:
        on_runtime = predicting_runtime(cfg.model.arch, cfg.train.precision, device) == "onnxruntime"
        extract = CheckedOnnx(backbone, backbone_file(cfg, pre.image_size, cache_dir), t.threads, ("features",)) \
            if on_runtime else backbone
        for images, _ in progress(loader, desc=f"features {split}", unit="batch", leave=False):
            x = prepare_batch(images, pre, device, t.channels_last and not on_runtime)
            with autocast(device, t.precision):  # PyTorch's forward only; the runtime computes in fp32
                batch_views = [extract(v).float().flatten(1).cpu() for v in ([x, x.flip(3)] if views == 2 else [x])]
            chunks.append(torch.stack(batch_views, 1))
    features = torch.cat(chunks).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: np.save(fh, features))
    return features


def feature_dataset(features: torch.Tensor, labels: torch.Tensor, train: bool, flips: bool,
                    indices: np.ndarray | None = None) -> TensorDataset:
    """Training: one example per view used (the mirror too with flips), shape (F,). Evaluation: one
    per image with all its views, shape (views, F), so that predict() can average them (tta)."""
    if indices is not None:
        features, labels = features[indices], labels[indices]
    if not train:
        return TensorDataset(features, labels)
    views = features.shape[1] if flips else 1
    return TensorDataset(features[:, :views].reshape(-1, features.shape[2]), labels.repeat_interleave(views))


def feature_loaders(cfg: Config, model: nn.Module, decoded: dict, pre: Preprocessing, cache_dir: Path,
                    device: torch.device) -> dict:
    """Loaders of (features, label) with the same batching as the image loaders."""
    loaders = {}
    for split, images in decoded.items():
        features = torch.from_numpy(backbone_features(cfg, model, images, pre, split, cache_dir, device))
        train = split == "train"
        dataset = feature_dataset(features, torch.from_numpy(images.labels), train, cfg.data.feature_flips)
        order = train_order(cfg.train.sampler, dataset.tensors[1], torch.Generator()) if train else {}
        loaders[split] = DataLoader(dataset, batch_size=cfg.train.batch_size if train else cfg.train.eval_batch(),
                                    **order)
    return loaders

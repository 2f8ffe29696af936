"""The audit's view of photos (ImageNet EfficientNet-Lite0 features at 224 px, from the feature cache), and what
every training run reports with it: how many test photos have a near-copy in train (data.leak_check), so that a
test accuracy inflated by a leak is never silent. The audit itself is petlab/audit.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from petlab.config import Config, load_config
from petlab.data.cache import DecodedImages, decode_split
from petlab.data.datasets import Splits
from petlab.data.near_copies import near_copy_pairs
from petlab.data.transforms import Preprocessing
from petlab.engine.features import backbone_features
from petlab.engine.speed import speed_settings
from petlab.models.zoo import ARCHS, build_imagenet_classifier

AUDIT_ARCH, AUDIT_SIZE = "efficientnet_lite0", 224
SPLIT_ORDER = ("train", "val", "test")


def audit_config(task: str, seed: int = 0, tracking: str = "none") -> Config:
    cfg = load_config(None, {"task": task, "seed": seed, "model.arch": AUDIT_ARCH, "model.pretrained": True,
                             "model.freeze_backbone": True, "data.augment": False, "tracking.backend": tracking})
    return cfg.updated(speed_settings(cfg, torch.device("cpu")))


def audit_features(splits: Splits, cache: Path, cfg: Config) -> tuple[dict[str, DecodedImages], np.ndarray,
                                                                       torch.nn.Module]:
    """Each split decoded at the audit's size, the features of every readable photo (splits in SPLIT_ORDER, each
    in its decoded order) and the ImageNet classifier they came from (its head answers "is this a pet")."""
    pre = Preprocessing.for_model(ARCHS[AUDIT_ARCH], AUDIT_SIZE, cfg.data.resize_ratio)
    decoded = {split: decode_split(getattr(splits, split), pre, cache, split)
               for split in SPLIT_ORDER if getattr(splits, split)}
    model = build_imagenet_classifier(AUDIT_ARCH)
    features = np.concatenate([backbone_features(cfg, model, images, pre, split, cache, torch.device("cpu"))[:, 0]
                               for split, images in decoded.items()])
    return decoded, features, model


def readable_files(splits: Splits, decoded: dict[str, DecodedImages]) -> list[tuple[str, str]]:
    """(split, file) of every decoded photo, in the order of audit_features' rows."""
    rows = []
    for split, images in decoded.items():
        bad = {s["path"] for s in images.skipped}
        rows += [(split, p) for p, _ in getattr(splits, split) if p not in bad]
    return rows


def test_copies_in_train(splits: Splits, cache: Path, task: str) -> dict:
    """{"count": test photos with a near-copy in train, "pairs": [{test, train, score}], "method"}."""
    if not splits.test or not splits.train:
        return {"count": 0, "pairs": [], "method": "no test split" if not splits.test else "no train split"}
    only = Splits(splits.dataset, splits.root, splits.classes, splits.train, [], splits.test)
    decoded, features, _ = audit_features(only, cache, audit_config(task))
    rows = readable_files(only, decoded)
    squares = [square for images in decoded.values() for square in images.array]
    pairs = []
    for i, j, score in near_copy_pairs(features, squares):
        (si, fi), (sj, fj) = rows[i], rows[j]
        if {si, sj} == {"train", "test"}:
            test, train = (fi, fj) if si == "test" else (fj, fi)
            pairs.append({"test": test, "train": train, "score": round(score, 4)})
    return {"count": len({p["test"] for p in pairs}), "pairs": pairs,
            "method": f"petlab/data/near_copies.py on {AUDIT_ARCH} features at {AUDIT_SIZE} px"}

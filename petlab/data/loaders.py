"""DataLoaders over the decoded-image cache: uint8 crops in, normalisation happens per batch."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from petlab.data.cache import DecodedImages
from petlab.data.transforms import Preprocessing


class CachedImages(Dataset):
    def __init__(self, decoded: DecodedImages, transform):
        self.decoded = decoded
        self.transform = transform

    def __len__(self) -> int:
        return len(self.decoded.labels)

    def __getitem__(self, i: int):
        square = torch.from_numpy(self.decoded.array[i].copy()).permute(2, 0, 1)
        return self.transform(square), int(self.decoded.labels[i])


def train_order(sampler: str, labels, generator: torch.Generator | None) -> dict:
    """The DataLoader keywords that order a training epoch: a shuffle ("shuffle"), or ("balanced") torch's
    WeightedRandomSampler drawing len(labels) photos with replacement, every class equally often
    (engine/imbalance.py says when to use which). Both draw from `generator`, which the trainer reseeds
    each epoch, so a resumed epoch repeats exactly."""
    if sampler == "shuffle":
        return {"shuffle": True, "generator": generator}
    labels = np.asarray(labels)
    per_photo = 1.0 / np.bincount(labels)[labels]
    return {"sampler": WeightedRandomSampler(torch.as_tensor(per_photo, dtype=torch.double), len(labels),
                                             replacement=True, generator=generator),
            "generator": generator}


def make_loader(decoded: DecodedImages, pre: Preprocessing, train: bool, batch_size: int,
                num_workers: int, generator: torch.Generator | None = None,
                crop_scale_min: float = 0.35, hflip: bool = True, augment: bool = True,
                policy: str = "none", sampler: str = "shuffle") -> DataLoader:
    """train: in train_order(sampler), and randomly cropped and flipped (+ the policy) unless augment is False."""
    transform = pre.train_augment(crop_scale_min, hflip, policy) if train and augment else pre.eval_crop
    order = train_order(sampler, decoded.labels, generator) if train else {"shuffle": False, "generator": generator}
    return DataLoader(
        CachedImages(decoded, transform),
        batch_size=batch_size,
        drop_last=False,
        num_workers=num_workers,
        persistent_workers=False,
        **order,
    )

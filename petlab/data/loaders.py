"""DataLoaders over the decoded-image cache: uint8 crops in, normalisation happens per batch."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

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


def make_loader(decoded: DecodedImages, pre: Preprocessing, train: bool, batch_size: int,
                num_workers: int, generator: torch.Generator | None = None,
                crop_scale_min: float = 0.35, hflip: bool = True, augment: bool = True,
                policy: str = "none") -> DataLoader:
    """train: shuffled, and randomly cropped and flipped (+ the policy) unless augment is False."""
    transform = pre.train_augment(crop_scale_min, hflip, policy) if train and augment else pre.eval_crop
    return DataLoader(
        CachedImages(decoded, transform),
        batch_size=batch_size,
        shuffle=train,
        drop_last=False,
        num_workers=num_workers,
        generator=generator,
        persistent_workers=False,
    )

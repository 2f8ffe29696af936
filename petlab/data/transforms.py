"""Preprocessing, defined once per model and saved with every run and registered model.

Eval and the demo: resize the short side to `resize_size`, centre-crop a square of that size
(this square is what the decoded-image cache stores), centre-crop `image_size`, scale to
[0, 1], normalise. Training takes a random resized crop + flip of the same cached square
instead of the centre crop. Normalisation runs on whole batches (`normalize`), outside the
model graph, so exported models take the same normalised tensors as training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # a torchvision InterpolationMode value: bilinear, bicubic, nearest, ...

    def __post_init__(self):
        v2.InterpolationMode(self.interpolation)  # an unknown name fails here, not at the first resize

    @classmethod
    def for_model(cls, spec, image_size: int | None, resize_ratio: float) -> Preprocessing:
        size = image_size or spec.image_size
        return cls(size, int(round(size * resize_ratio)), tuple(spec.mean), tuple(spec.std))

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(d["image_size"], d["resize_size"], tuple(d["mean"]), tuple(d["std"]), d["interpolation"])

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(mean=list(self.mean), std=list(self.std))
        return d

    def square(self, img: Image.Image) -> torch.Tensor:
        """RGB PIL image -> uint8 CHW tensor, short side resized and centre-cropped to resize_size."""
        tensor = F.pil_to_tensor(img)
        tensor = F.resize(tensor, [self.resize_size], interpolation=v2.InterpolationMode(self.interpolation),
                          antialias=True)
        return F.center_crop(tensor, [self.resize_size, self.resize_size])

    def eval_crop(self, square: torch.Tensor) -> torch.Tensor:
        return F.center_crop(square, [self.image_size, self.image_size])

    def eval_tensor(self, img: Image.Image) -> torch.Tensor:
        """The whole eval path for one RGB image, as the demo and evaluate.py use it: uint8 CHW."""
        return self.eval_crop(self.square(img))

    def train_augment(self, crop_scale_min: float, hflip: bool, policy: str = "none") -> v2.Transform:
        """Random resized crop (+ flip) of the cached square; policy "trivial" adds TrivialAugmentWide,
        one random photometric or geometric op per image (about 0.25 ms on a 128 px uint8 crop here)."""
        steps = [v2.RandomResizedCrop(self.image_size, scale=(crop_scale_min, 1.0), antialias=True)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        if policy == "trivial":
            steps.append(v2.TrivialAugmentWide())
        return v2.Compose(steps)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> float, scaled to [0, 1] and standardised."""
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return (batch.float().div_(255.0) - mean) / std

"""Preprocessing, defined once per model and saved with every run, registered model and model.onnx.

Eval, serving and the cached training squares all start with the same steps on the decoded RGB photo:
1. resize with Pillow (`Image.resize`, the card's filter, bilinear by default) so the short side is
   `resize_size` and the long side is int(resize_size * long / short), truncated;
2. centre-crop a square of `resize_size` (the decoded-image cache stores this square), then centre-crop
   `image_size` from it; each crop's offset is round((side - size) / 2), Python's round (half to even),
   as torchvision's centre crop rounds;
3. scale to [0, 1] in float32 (x / 255) and standardise ((x - mean) / std), channels first.
Training takes a random resized crop and flip of the square instead of step 2's second crop. This is
the whole definition: `models/README.md` reproduces it in a few lines of numpy and Pillow, and its
probabilities match petlab's within 1e-4 (tests/test_registry.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
           "lanczos": Image.Resampling.LANCZOS}


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side `short_side` and the long side scaled and truncated."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def centre_crop(array: np.ndarray, size: int) -> np.ndarray:
    """The centre `size` x `size` of an HWC array (offsets rounded as torchvision rounds them)."""
    top, left = round((array.shape[0] - size) / 2), round((array.shape[1] - size) / 2)
    return array[top:top + size, left:left + size]


@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # a Pillow filter name: bilinear, bicubic, nearest, box, hamming, lanczos

    def __post_init__(self):
        if self.interpolation not in FILTERS:  # an unknown name fails here, not at the first resize
            raise ValueError(f"unknown interpolation {self.interpolation!r}; one of {sorted(FILTERS)}")
        if not 0 < self.image_size <= self.resize_size:
            raise ValueError(f"image_size {self.image_size} must be positive and at most resize_size "
                             f"{self.resize_size}")

    @classmethod
    def for_model(cls, spec, image_size: int | None, resize_ratio: float):
        size = image_size or spec.image_size
        return cls(size, int(round(size * resize_ratio)), tuple(spec.mean), tuple(spec.std))

    @classmethod
    def from_dict(cls, d: dict):
        return cls(d["image_size"], d["resize_size"], tuple(d["mean"]), tuple(d["std"]), d["interpolation"])

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(mean=list(self.mean), std=list(self.std))
        return d

    def square_array(self, img: Image.Image) -> np.ndarray:
        """RGB PIL image -> uint8 HWC array: short side resized, centre square of resize_size (steps 1-2)."""
        resized = img.resize(resized_size(*img.size, self.resize_size), FILTERS[self.interpolation])
        return centre_crop(np.asarray(resized), self.resize_size)

    def eval_array(self, img: Image.Image) -> np.ndarray:
        """The eval crop of one RGB image: uint8 HWC, image_size square."""
        return np.ascontiguousarray(centre_crop(self.square_array(img), self.image_size))

    def normalize_array(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC -> float32 NCHW, scaled to [0, 1] and standardised (step 3)."""
        x = batch.astype(np.float32) / np.float32(255.0)
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def batch_array(self, images: list) -> np.ndarray:
        """RGB PIL images -> the float32 NCHW batch a model takes."""
        return self.normalize_array(np.stack([self.eval_array(img) for img in images]))

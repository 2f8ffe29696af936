"""Preprocessing as training uses it: the one definition (petlab/inference/preprocessing.py, numpy and
Pillow, what the server and model.onnx's users run) returning torch tensors, plus training's augmentation.

Eval and the demo: resize the short side to `resize_size`, centre-crop a square of that size
(this square is what the decoded-image cache stores), centre-crop `image_size`, scale to
[0, 1], normalise. Training takes a random resized crop + flip of the same cached square
instead of the centre crop. Normalisation runs on whole batches (`normalize`), outside the
model graph, so exported models take the same normalised tensors as training did.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from petlab.inference import preprocessing


class Preprocessing(preprocessing.Preprocessing):
    def square(self, img: Image.Image) -> torch.Tensor:
        """RGB PIL image -> uint8 CHW tensor, short side resized and centre-cropped to resize_size."""
        return torch.from_numpy(self.square_array(img).copy()).permute(2, 0, 1)

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

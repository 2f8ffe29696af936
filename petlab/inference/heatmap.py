"""A class-activation map, placed back on the photo it explains: torch-free, so the server and the Space draw it.

The model sees a centre crop of the photo resized (inference/preprocessing.py), so its map [h, w] covers that
crop only. `PhotoHeatmap` puts the map where the crop lies in the photo's own frame (upright, as decoded), with
the parts the model never saw at zero, keeps its positive part (evidence for the class) scaled to [0, 1], and
renders it as a small grid of floats and as a PNG overlay.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from petlab.inference.preprocessing import Preprocessing, resized_size

GRID_CELLS = 32  # the grid's long side, in cells: what a client overlays, small enough for JSON
OVERLAY_SIDE = 448  # the overlay PNG's long side, in pixels (never larger than the photo)
OVERLAY_ALPHA = 0.55  # the colour map's opacity over the photo (dark: no evidence, or a part the model never saw)
# A perceptually ordered colour map (matplotlib's "inferno" at 5 stops), interpolated: no matplotlib on the Space
INFERNO = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)


def crop_box(width: int, height: int, pre: Preprocessing) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the model's eval crop, in the photo's own pixels."""
    rw, rh = resized_size(width, height, pre.resize_size)
    left = round((rw - pre.resize_size) / 2) + round((pre.resize_size - pre.image_size) / 2)
    top = round((rh - pre.resize_size) / 2) + round((pre.resize_size - pre.image_size) / 2)
    sx, sy = width / rw, height / rh
    return left * sx, top * sy, (left + pre.image_size) * sx, (top + pre.image_size) * sy


def in_frame(cam: np.ndarray, width: int, height: int, pre: Preprocessing) -> np.ndarray:
    """The map [h, w] of the eval crop -> [height, width] over the whole photo: the positive part, bilinearly
    resized onto the crop's place, zero elsewhere, scaled so its peak is 1 (all zero if it has no positive part)."""
    positive = np.maximum(np.asarray(cam, dtype=np.float32), 0)
    peak = float(positive.max()) if positive.size else 0.0
    frame = np.zeros((height, width), dtype=np.float32)
    if peak <= 0:
        return frame
    left, top, right, bottom = crop_box(width, height, pre)
    x0, y0 = max(0, round(left)), max(0, round(top))
    x1, y1 = min(width, max(x0 + 1, round(right))), min(height, max(y0 + 1, round(bottom)))
    resized = Image.fromarray(positive / peak).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
    frame[y0:y1, x0:x1] = np.clip(np.asarray(resized), 0, 1)
    return frame


def colour(heat: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] float RGB on INFERNO."""
    position = np.clip(heat, 0, 1) * (len(INFERNO) - 1)
    low = np.minimum(position.astype(np.int64), len(INFERNO) - 2)
    fraction = (position - low)[..., None]
    return INFERNO[low] * (1 - fraction) + INFERNO[low + 1] * fraction


@dataclass
class PhotoHeatmap:
    """A map in the photo's frame ([height, width] in [0, 1]) and the class it explains."""

    label: str
    frame: np.ndarray

    @classmethod
    def from_cam(cls, label: str, cam: np.ndarray, image: Image.Image, pre: Preprocessing) -> PhotoHeatmap:
        return cls(label, in_frame(cam, image.width, image.height, pre))

    def grid(self, cells: int = GRID_CELLS) -> np.ndarray:
        """The map averaged into at most `cells` cells on the photo's long side (rows top to bottom)."""
        height, width = self.frame.shape
        scale = cells / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return np.asarray(Image.fromarray(self.frame).resize(size, Image.Resampling.BOX))

    def peak(self) -> tuple[float, float]:
        """(x, y) of the map's maximum, as fractions of the photo's width and height."""
        y, x = np.unravel_index(int(np.argmax(self.frame)), self.frame.shape)
        return (x + 0.5) / self.frame.shape[1], (y + 0.5) / self.frame.shape[0]

    def overlay(self, image: Image.Image, side: int = OVERLAY_SIDE) -> Image.Image:
        """The photo (long side at most `side`) with the map's colours blended over it."""
        scale = min(1.0, side / max(image.size))
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        photo = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
        heat = np.asarray(Image.fromarray(self.frame).resize(size, Image.Resampling.BILINEAR))[..., None]
        blended = photo * (1 - OVERLAY_ALPHA) + colour(heat[..., 0]) * OVERLAY_ALPHA
        return Image.fromarray(blended.round().astype(np.uint8))

    def to_json(self, image: Image.Image) -> dict:
        """What /api/predict returns with explain=true."""
        grid = self.grid()
        buffer = io.BytesIO()
        self.overlay(image).save(buffer, format="PNG", compress_level=1)  # fast: zlib level 6 took 25 ms
        return {"class": self.label, "grid": np.round(grid, 4).tolist(), "rows": grid.shape[0], "cols": grid.shape[1],
                "frame": "the uploaded photo, upright (EXIF applied), rows top to bottom; 0 outside the model's crop",
                "peak": [round(float(v), 4) for v in self.peak()],
                "overlay_png": base64.b64encode(buffer.getvalue()).decode("ascii")}

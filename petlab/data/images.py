"""Turning any image file people actually have into an RGB picture, or saying exactly why not.

One function serves training, evaluation and the demo, so a photo is converted the same way
everywhere: EXIF rotation applied, first frame of an animation, 16-bit scaled (not clipped),
transparency composited onto white, CMYK/palette/grayscale converted to RGB.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Above this many pixels an image is refused instead of decoded: a 30000 x 30000 PNG is a
# decompression bomb, not a pet photo. Pillow's own limit is a warning; we make it an error.
MAX_PIXELS = 64_000_000


class BadImageError(ValueError):
    """A file that is not a usable image. `reason` is one of REASONS."""

    REASONS = ("empty", "not_an_image", "truncated", "too_large", "corrupt")

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: PIL's convert("L") clips at 255, which turns photos white.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


# Modes Image.reduce averages correctly (palette indices, 1-bit and 16-bit become RGB first).
REDUCIBLE = ("L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F")


def load_rgb(source: str | os.PathLike | bytes | BinaryIO, *, max_side: int | None = None,
             max_pixels: int = MAX_PIXELS, formats: tuple[str, ...] | None = None) -> Image.Image:
    """Decode fully (so truncation is caught here, not mid-batch) and return an RGB image.

    For serving (see petlab.serving), three bounds on what one decode may cost:
    - `formats`: the Pillow formats accepted (others are `not_an_image`, never handed to a plugin
      such as EPS, which runs Ghostscript);
    - `max_side`: decode at reduced size where the format allows it (JPEG's DCT scaling, through
      `Image.draft`), else shrink by an integer factor right after decoding (`Image.reduce`), so a
      photo ends at most about twice `max_side` on its long side, before any conversion copies it;
    - `max_pixels`: checked after the draft, so a large JPEG costs what its reduced decode costs.
    """
    if isinstance(source, bytes):
        if not source:
            raise BadImageError("empty", "zero bytes")
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)) and Path(source).stat().st_size == 0:
        raise BadImageError("empty", f"{source} is a zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=formats) as img:
                if max_side:
                    img.draft(None, (max_side, max_side))  # JPEG only; a no-op for other formats
                if img.width * img.height > max_pixels:
                    raise BadImageError("too_large", f"{img.width}x{img.height} px is over {max_pixels} pixels")
                img.seek(0)  # animated GIF/WebP/PNG: the first frame
                img.load()
                if max_side and max(img.size) >= 2 * max_side:
                    if img.mode not in REDUCIBLE:
                        img = _to_rgb(img)
                    img = img.reduce(max(img.size) // max_side)
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except BadImageError:
        raise
    except UnidentifiedImageError as exc:
        accepted = f" (accepted: {', '.join(formats)})" if formats else ""
        raise BadImageError("not_an_image", f"{exc}{accepted}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError("too_large", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise BadImageError(reason, str(exc)) from exc

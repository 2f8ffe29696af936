"""Turning any image file people actually have into an RGB picture, or saying exactly why not.

One function serves training, evaluation and the demo, so a photo is converted the same way
everywhere: EXIF rotation applied, first frame of an animation, 16-bit scaled (not clipped),
transparency composited onto white, CMYK/palette/grayscale converted to RGB.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

# Above this many pixels an image is refused instead of decoded: a 30000 x 30000 PNG is a
# decompression bomb, not a pet photo. Pillow's own limit is a warning; we make it an error.
MAX_PIXELS = 64_000_000


class BadImageError(ValueError):
    """A file that is not a usable image. `reason` is one of REASONS."""

    REASONS = ("empty", "not_an_image", "truncated", "too_large", "corrupt")

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def bytes_per_pixel(mode: str) -> int:
    """What Pillow stores a pixel of `mode` in: 1 byte for 1, L and P, 2 for 16-bit, else 4 (RGB is padded)."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def gray_scale(img: Image.Image) -> float | None:
    """For 16-bit, 32-bit and float grayscale: the value that becomes white, decided over the whole image (so a
    strip is converted as the whole would be). None for other modes."""
    if img.mode.startswith("I;16"):
        return 65535.0
    if img.mode == "I":
        return 65535.0 if img.getextrema()[1] > 255 else 255.0
    if img.mode == "F":
        return 1.0 if img.getextrema()[1] <= 1.0 else 255.0
    return None


def _to_rgb(img: Image.Image, white: float | None = None) -> Image.Image:
    """RGB of `img`; `white` is gray_scale() of the image `img` is a strip of (default: of `img` itself)."""
    if img.mode.startswith("I") or img.mode == "F":
        # 16-bit and float grayscale: PIL's convert("L") clips at 255, which turns photos white. float32, not
        # float64: 4 bytes a pixel, and the callers convert a strip at a time.
        arr = np.asarray(img, dtype=np.float32)
        img = Image.fromarray(np.clip(arr * (255.0 / (white or gray_scale(img))) + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


# EXIF orientation -> the transposition that makes the photo upright (as ImageOps.exif_transpose does)
ORIENTATION_TAG = 0x0112
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}

STRIP_PIXELS = 1 << 20  # converted at a time by reduced_rgb: about 4 MB of RGBA


def reduced_rgb(img: Image.Image, factor: int) -> Image.Image:
    """RGB of `img` at 1/factor of its size (Image.reduce's box average), with no full-size copy beside the
    decoded image: converted and reduced a strip of `factor`-aligned rows at a time. Image.reduce of the
    whole would first convert it (palette and 16-bit to RGB, RGBA and LA to premultiplied alpha, a full-size
    copy each); a strip at a time gives the same pixels (compositing onto white commutes with averaging)."""
    white = gray_scale(img)
    rows = max(factor, STRIP_PIXELS // max(img.width, 1) // factor * factor)
    out = Image.new("RGB", (-(-img.width // factor), -(-img.height // factor)))
    for top in range(0, img.height, rows):
        strip = _to_rgb(img.crop((0, top, img.width, min(top + rows, img.height))), white)
        out.paste(strip.reduce(factor), (0, top // factor))
    return out


def load_rgb(source: str | os.PathLike | bytes | BinaryIO, *, max_side: int | None = None,
             max_pixels: int = MAX_PIXELS, max_decoded_bytes: int | None = None,
             formats: tuple[str, ...] | None = None, admit=None) -> Image.Image:
    """Decode fully (so truncation is caught here, not mid-batch) and return an RGB image.

    For serving (see petlab.serving), bounds on what one decode may cost:
    - `formats`: the Pillow formats accepted (others are `not_an_image`, never handed to a plugin
      such as EPS, which runs Ghostscript);
    - `max_side`: decode at reduced size where the format allows it (JPEG's DCT scaling, through
      `Image.draft`), else shrink by an integer factor right after decoding (`reduced_rgb`), so a
      photo ends at most about twice `max_side` on its long side, with no full-size copy made;
    - `max_pixels` and `max_decoded_bytes` (pixels times what Pillow stores each in): checked from the
      header after the draft, so a large JPEG costs what its reduced decode costs;
    - `admit(decoded_bytes)`: a context manager held while the image is decoded and converted (the
      server's memory budget, shared by every request).
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
                decoded = img.width * img.height * bytes_per_pixel(img.mode)
                if max_decoded_bytes and decoded > max_decoded_bytes:
                    raise BadImageError("too_large", f"{img.width}x{img.height} px of {img.mode} is "
                                                     f"{decoded / 2**20:.0f} MB decoded, over "
                                                     f"{max_decoded_bytes / 2**20:.0f} MB")
                with admit(decoded) if admit else contextlib.nullcontext():
                    img.seek(0)  # animated GIF/WebP/PNG: the first frame
                    img.load()
                    orientation = img.getexif().get(ORIENTATION_TAG, 1)
                    factor = max(img.size) // max_side if max_side else 1
                    rgb = reduced_rgb(img, factor) if factor >= 2 else _to_rgb(img)
                    return rgb.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else rgb
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

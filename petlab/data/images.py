"""Turning any image file people actually have into an RGB picture, or saying exactly why not.

One function serves training, evaluation and the demo, so a photo is converted the same way
everywhere: EXIF rotation applied, first frame of an animation, 16-bit scaled (not clipped),
transparency composited onto white, CMYK/palette/grayscale converted to RGB.
"""

from __future__ import annotations

import contextlib
import io
import math
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


def reduced_rgb(img: Image.Image, factor: int, box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """RGB of `img` (or of its `box`: left, top, right, bottom) at 1/factor of its size (Image.reduce's box
    average), with no full-size copy beside the decoded image: converted and reduced a strip of
    `factor`-aligned rows at a time. Image.reduce of the whole would first convert it (palette and 16-bit to
    RGB, RGBA and LA to premultiplied alpha, a full-size copy each); a strip at a time gives the same pixels
    (compositing onto white commutes with averaging)."""
    left, top, right, bottom = box or (0, 0, img.width, img.height)
    width, height = right - left, bottom - top
    white = gray_scale(img)
    rows = max(factor, STRIP_PIXELS // max(width, 1) // factor * factor)
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for y in range(0, height, rows):
        strip = _to_rgb(img.crop((left, top + y, right, top + min(y + rows, height))), white)
        out.paste(strip.reduce(factor) if factor > 1 else strip, (0, y // factor))
    return out


def centre_box(width: int, height: int, max_aspect: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centre of a width x height image whose long side is at most
    `max_aspect` times its short side: the whole image where it already is."""
    if width >= height:
        keep = min(width, max(1, int(height * max_aspect)))
        left = (width - keep) // 2
        return left, 0, left + keep, height
    keep = min(height, max(1, int(width * max_aspect)))
    top = (height - keep) // 2
    return 0, top, width, top + keep


def jpeg_coefficient_bytes(img: Image.Image, width: int, height: int) -> int:
    """What libjpeg holds while it decodes a progressive (multi-scan) JPEG of `width` x `height`: every
    component's DCT coefficients at full size (2 bytes each, whole 8x8 blocks), whatever `draft()` asked
    for, since each scan refines all of them. 0 for a baseline JPEG (decoded a row of blocks at a time)
    and for other formats. A 1 MB progressive 4:4:4 JPEG of 9450 x 9450 holds 536 MB here."""
    if img.format != "JPEG" or not (img.info.get("progressive") or img.info.get("progression")):
        return 0
    layers = getattr(img, "layer", None) or [("", 1, 1, 0)] * len(img.getbands())
    h_max, v_max = max(layer[1] for layer in layers), max(layer[2] for layer in layers)

    def blocks(side: int, factor: int, most: int) -> int:  # 8x8 blocks of a component subsampled factor/most
        return math.ceil(math.ceil(side * factor / most) / 8)

    return sum(blocks(width, h, h_max) * blocks(height, v, v_max) * 64 * 2 for _, h, v, _ in layers)


def load_rgb(source: str | os.PathLike | bytes | BinaryIO, *, max_side: int | None = None,
             max_pixels: int = MAX_PIXELS, max_decoded_bytes: int | None = None,
             formats: tuple[str, ...] | None = None, admit=None, max_aspect: float | None = None) -> Image.Image:
    """Decode fully (so truncation is caught here, not mid-batch) and return an RGB image.

    For serving (see petlab.serving), bounds on what one decode may cost:
    - `formats`: the Pillow formats accepted (others are `not_an_image`, never handed to a plugin
      such as EPS, which runs Ghostscript);
    - `max_side`: decode at reduced size where the format allows it (JPEG's DCT scaling, through
      `Image.draft`), else shrink by an integer factor right after decoding (`reduced_rgb`), so a
      photo ends at most about twice `max_side` on its long side, with no full-size copy made;
    - `max_aspect`: only the centre of a longer image is kept (long side at most `max_aspect` times the
      short side), before it is shrunk: the model's centre crop never sees the rest, and a 2047 x 1 PNG
      once became a 524,032 x 255 image (1.26 GB) when its short side was resized for the model;
    - `max_pixels` and `max_decoded_bytes`: checked from the header after the draft, against what the
      decode really holds: pixels times what Pillow stores each in, or for a progressive JPEG its
      full-size coefficients (jpeg_coefficient_bytes), whichever is larger;
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
                full_size = img.size
                if max_side:
                    img.draft(None, (max_side, max_side))  # JPEG only; a no-op for other formats
                if img.width * img.height > max_pixels:
                    raise BadImageError("too_large", f"{img.width}x{img.height} px is over {max_pixels} pixels")
                coefficients = jpeg_coefficient_bytes(img, *full_size)
                decoded = max(img.width * img.height * bytes_per_pixel(img.mode), coefficients)
                if max_decoded_bytes and decoded > max_decoded_bytes:
                    kind = "progressive JPEG" if coefficients else img.mode
                    raise BadImageError("too_large", f"{full_size[0]}x{full_size[1]} px of {kind} is "
                                                     f"{decoded / 2**20:.0f} MB decoded, over "
                                                     f"{max_decoded_bytes / 2**20:.0f} MB")
                with admit(decoded) if admit else contextlib.nullcontext():
                    img.seek(0)  # animated GIF/WebP/PNG: the first frame
                    img.load()
                    orientation = img.getexif().get(ORIENTATION_TAG, 1)
                    box = centre_box(*img.size, max_aspect) if max_aspect else (0, 0, *img.size)
                    factor = max(box[2] - box[0], box[3] - box[1]) // max_side if max_side else 1
                    if factor >= 2 or box != (0, 0, *img.size):
                        rgb = reduced_rgb(img, max(factor, 1), box)
                    else:
                        rgb = _to_rgb(img)
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

"""Small generated images and dataset layouts for tests: real files, real formats."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Two visually separable "classes": mostly red vs mostly blue, with noise so no two files match.
COLOURS = [(200, 40, 40), (40, 60, 200), (40, 180, 60)]


def photo(label: int, seed: int, size: tuple[int, int] = (80, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[label % len(COLOURS)], np.float32)
    pixels = base + rng.normal(0, 25, (size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def save_photo(path: Path, label: int, seed: int, size=(80, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(label, seed, size).save(path, "JPEG", quality=90)
    return path


def make_imagefolder(root: Path, splits: dict[str, int], classes=("cats", "dogs"), size=(80, 64)) -> Path:
    """root/<split>/<class>/<n>.jpg with `splits[split]` images per class."""
    seed = 0
    for split, per_class in splits.items():
        for label, name in enumerate(classes):
            for i in range(per_class):
                seed += 1
                save_photo(root / split / name / f"{name}.{i}.jpg", label, seed, size)
    return root


def jpeg_bytes(label: int = 0, seed: int = 0, size=(80, 64)) -> bytes:
    buf = io.BytesIO()
    photo(label, seed, size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_bad_files(folder: Path) -> dict[str, Path]:
    """One of each kind of unusable file, keyed by the reason petlab should report."""
    folder.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes(seed=99)
    files = {
        "empty": folder / "zero.jpg",
        "not_an_image": folder / "notes.jpg",
        "truncated": folder / "truncated.jpg",
        "corrupt": folder / "garbled.png",
    }
    files["empty"].write_bytes(b"")
    files["not_an_image"].write_text("this is a text file with a .jpg name\n")
    files["truncated"].write_bytes(good[: len(good) // 2])
    png = io.BytesIO()
    photo(0, 5).save(png, "PNG")
    data = bytearray(png.getvalue())
    data[60:200] = bytes(140)  # zero the pixel data's start: the PNG CRC check fails
    files["corrupt"].write_bytes(bytes(data))
    return files


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def odd_photos(upright: Image.Image) -> dict[str, bytes]:
    """The same real photo in every odd-but-valid form a user might upload (each must be predicted)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: "rotate 90 degrees clockwise to display"
    sixteen = (np.asarray(upright.convert("L"), np.uint16) * 257).astype(np.uint16)
    frames = [upright, Image.new("RGB", upright.size, (0, 0, 255))]
    return {
        "grayscale.jpg": encode(upright.convert("L"), "JPEG", quality=95),
        "palette.png": encode(upright.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "rgba.png": encode(upright.convert("RGBA"), "PNG"),
        "cmyk.jpg": encode(upright.convert("CMYK"), "JPEG", quality=95),
        "sixteen_bit.png": encode(Image.fromarray(sixteen), "PNG"),
        "exif_rotated.png": encode(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif.tobytes()),
        "animated.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "one_pixel.png": encode(Image.new("RGB", (1, 1), (120, 90, 60)), "PNG"),
    }


def png_bomb(side: int = 30000) -> bytes:
    """A valid 1-bit PNG of side x side pixels that compresses to ~100 KB: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes((side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")

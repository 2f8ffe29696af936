"""Photos that are not pets, available offline: what "not a pet" is tuned and measured on.

scikit-image, matplotlib and scikit-learn ship sample photos inside their wheels (an astronaut, a rocket,
coffee, coins, motorcycles, the Moon, text, textures, a Chinese temple, a flower, ...; scikit-image's cat
`chelsea` is left out), and drawings and text cards are synthesised (shapes and strokes on plain
backgrounds; lines of words, as the "camera shy" and "Adopted" placeholders found in real pet datasets),
the kind of upload a demo gets from a curious stranger. Each item is (name, RGB PIL image, source).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from petlab.data.images import load_rgb

PETS_AMONG_SAMPLES = {"chelsea"}  # scikit-image's cat
SUFFIXES = {".png", ".jpg", ".jpeg"}


def sample_photo_files() -> list[Path]:
    """The sample photos bundled with scikit-image, matplotlib and scikit-learn (no download)."""
    import matplotlib
    import skimage
    import sklearn

    folders = [Path(skimage.__file__).parent / "data", Path(matplotlib.get_data_path()) / "sample_data",
               Path(sklearn.__file__).parent / "datasets" / "images"]
    return sorted((p for folder in folders for p in folder.glob("*") if p.suffix.lower() in SUFFIXES
                   and p.stem not in PETS_AMONG_SAMPLES), key=lambda p: p.name)


def drawing(seed: int, size: int = 320) -> Image.Image:
    """A synthetic drawing: random filled shapes and strokes on a plain background."""
    rng = np.random.default_rng(seed)
    colour = lambda: tuple(int(c) for c in rng.integers(0, 256, 3))  # noqa: E731
    img = Image.new("RGB", (size, size), colour() if seed % 2 else (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 12))):
        box = sorted(rng.integers(0, size, 2).tolist()), sorted(rng.integers(0, size, 2).tolist())
        xy = [box[0][0], box[1][0], box[0][1], box[1][1]]
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.ellipse(xy, fill=colour(), outline=colour())
        elif kind == 1:
            draw.rectangle(xy, fill=colour())
        elif kind == 2:
            draw.polygon([tuple(rng.integers(0, size, 2).tolist()) for _ in range(int(rng.integers(3, 7)))],
                         fill=colour())
        else:
            draw.line([tuple(rng.integers(0, size, 2).tolist()) for _ in range(int(rng.integers(2, 8)))],
                      fill=colour(), width=int(rng.integers(2, 12)))
    return img


WORDS = ("adopted", "camera shy", "no photo available", "sorry", "this pet has found a home", "image coming soon",
         "petfinder", "photo not found", "404", "placeholder")


def text_card(seed: int, size: int = 320) -> Image.Image:
    """A synthetic text image: a few lines of words, dark on light or light on dark, at a few sizes."""
    rng = np.random.default_rng(1000 + seed)
    dark = seed % 2 == 0
    img = Image.new("RGB", (size, size), (250, 250, 245) if dark else (30, 40, 60))
    draw = ImageDraw.Draw(img)
    for line in range(int(rng.integers(1, 5))):
        font = ImageFont.load_default(size=int(rng.integers(18, 44)))
        y = 30 + line * size // 5 + int(rng.integers(0, 20))
        draw.text((int(rng.integers(5, 60)), y), WORDS[int(rng.integers(0, len(WORDS)))],
                  fill=(20, 20, 20) if dark else (240, 240, 240), font=font)
    return img


def non_pet_images(drawings: int = 24, texts: int = 8) -> list[tuple[str, Image.Image, str]]:
    photos = [(p.stem, load_rgb(p), "photo") for p in sample_photo_files()]
    return (photos + [(f"drawing-{i}", drawing(i), "drawing") for i in range(drawings)]
            + [(f"text-{i}", text_card(i), "text") for i in range(texts)])


def split_tune_heldout(items: list) -> tuple[list, list]:
    """Alternate items (in name order, photos, drawings and text apart) into a tuning half and a held-out half."""
    tune, held = [], []
    for source in ("photo", "drawing", "text"):
        group = [item for item in items if item[2] == source]
        tune += group[0::2]
        held += group[1::2]
    return tune, held

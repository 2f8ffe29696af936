"""Dirt put into a copy of a real dataset on purpose, so an audit's recall can be measured (tests and
benchmarks/audit.py): flipped labels and near-copies of train photos leaked into a held-out split."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from PIL import Image, ImageOps

from petlab.data.files import visible_dirs, visible_files


def copy_dataset(source: Path, to: Path) -> Path:
    shutil.copytree(source, to)
    return to


def flip_labels(split_dir: Path, fraction: float, seed: int) -> dict[str, str]:
    """Move a seeded `fraction` of an ImageFolder split's photos into another class folder (chosen at random).
    Returns {moved file's new path: its true class folder}."""
    rng = random.Random(seed)
    classes = visible_dirs(split_dir)
    photos = sorted(f for c in classes for f in visible_files(c))
    flipped = {}
    for photo in rng.sample(photos, round(fraction * len(photos))):
        wrong = rng.choice([c for c in classes if c != photo.parent])
        target = wrong / f"flipped_{photo.name}"
        photo.rename(target)
        flipped[str(target)] = photo.parent.name
    return flipped


def near_copy(source: Path, target: Path, mirror: bool, rng: random.Random) -> None:
    """Resized to 80%, cropped by 10% (of each side's length, at a random offset), mirrored if asked, saved as
    JPEG at quality 60."""
    with Image.open(source) as img:
        img = img.convert("RGB")
    img = img.resize((int(img.width * 0.8), int(img.height * 0.8)), Image.BILINEAR)
    dx, dy = img.width // 10, img.height // 10
    left, top = rng.randint(0, dx), rng.randint(0, dy)
    img = img.crop((left, top, left + img.width - dx, top + img.height - dy))
    (ImageOps.mirror(img) if mirror else img).save(target, "JPEG", quality=60)


def leak_into(train_dir: Path, held_out_dir: Path, count: int, mirrored: int, seed: int) -> dict[str, str]:
    """Near-copies of `count` seeded train photos into the same class folder of a held-out split, the first
    `mirrored` of them mirrored. Returns {copy's path: the train photo it came from}."""
    rng = random.Random(seed)
    photos = sorted(f for c in visible_dirs(train_dir) for f in visible_files(c))
    leaks = {}
    for k, photo in enumerate(rng.sample(photos, count)):
        target = held_out_dir / photo.parent.name / f"leak_{photo.stem}.jpg"
        near_copy(photo, target, k < mirrored, rng)
        leaks[str(target)] = str(photo)
    return leaks

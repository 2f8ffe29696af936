"""Near-copies: the same photo re-encoded, resized, slightly cropped, recoloured or mirrored, found among many.

Each photo's nearest neighbours by backbone-feature cosine are candidates; a candidate pair is a near-copy
when one photo's centre is found in the other's pixels (normalised cross-correlation, mirrored too, at a few
scales). Features alone confuse two photos of one black cat with one photo re-encoded; pixels alone cost too
much for every pair. The audit (petlab/audit.py) reports every pair; a training run counts its test photos
with a copy in train (petlab/engine/leaks.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.feature import match_template

from petlab.progress import progress

# Near-copies: candidates by feature cosine, confirmed by pixels (pixel_match). Measured on cats_and_dogs_filtered
# with 20 injected copies (JPEG q60, 80% size, a 10% crop, 5 mirrored): their cosine to the original was 0.78 to
# 0.95, their pixel match 0.95 to 1.0; the 60 closest distinct pairs by cosine matched 0.78 at most (README,
# "Know your data"; benchmarks/audit.py).
CANDIDATE_COSINE = 0.72
CANDIDATES = 3  # nearest photos checked per photo
NEAR_COPY = 0.9


def gray_thumbnail(square: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.asarray(square)).convert("L").resize((side, side), Image.BILINEAR),
                      np.float32)


FRAME = 32  # px: the grayscale thumbnail whose middle 75% is the template
SCALES = (28, 32, 36, 40)  # thumbnail sides searched: 0.875x to 1.25x the template's frame


def thumbnails(square: np.ndarray) -> dict:
    """What pixel_match compares, computed once per photo: its centre template and its scaled views."""
    mirror = np.ascontiguousarray(np.asarray(square)[:, ::-1])
    border = FRAME // 8
    return {"template": gray_thumbnail(square, FRAME)[border:FRAME - border, border:FRAME - border],
            "views": [gray_thumbnail(view, side) for view in (square, mirror) for side in SCALES]}


def pixel_match(a: dict, b: dict) -> float:
    """How well one photo's centre (the middle 75% of a 32 px grayscale thumbnail) is found in the other,
    mirrored or not, at 0.875x to 1.25x: the best normalised cross-correlation (skimage's match_template),
    both ways (a and b from thumbnails()). A re-encoded, resized, cropped or mirrored copy scores about 0.95
    or more; two photos of one cat in one pose, 0.8 or less."""
    best = -1.0
    for x, y in ((a, b), (b, a)):
        for view in y["views"]:
            best = max(best, float(match_template(view, x["template"]).max()))
            if best >= NEAR_COPY:  # found: the other views cannot change the verdict
                return best
    return best


def candidate_pairs(unit: np.ndarray, min_cosine: float = CANDIDATE_COSINE, per_photo: int = CANDIDATES,
                    block: int = 512) -> list[tuple[int, int]]:
    """Pairs (i < j) worth a pixel check: each photo's `per_photo` nearest by feature cosine, when at least
    `min_cosine` (computed in blocks of rows, so memory stays small)."""
    n, pairs = len(unit), set()
    for start in range(0, n, block):
        cosine = unit[start:start + block] @ unit.T
        for r in range(len(cosine)):
            cosine[r, start + r] = -1.0  # not itself
        nearest = np.argsort(-cosine, axis=1)[:, :per_photo]
        for r, row in enumerate(nearest):
            pairs.update((min(start + r, int(j)), max(start + r, int(j))) for j in row if cosine[r, j] >= min_cosine)
    return sorted(pairs)


def near_copy_pairs(features: np.ndarray, squares: list) -> list[tuple[int, int, float]]:
    """Every near-copy pair (i, j, pixel match): candidates by feature cosine, confirmed by pixels."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
    found, thumbs = [], {}
    for i, j in progress(candidate_pairs(unit), desc="near-copy check", unit="pair", leave=False):
        for k in (i, j):
            if k not in thumbs:
                thumbs[k] = thumbnails(squares[k])
        score = pixel_match(thumbs[i], thumbs[j])
        if score >= NEAR_COPY:
            found.append((i, j, score))
    return found

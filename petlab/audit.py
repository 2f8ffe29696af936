"""Know your data: near-copies, train/test leaks, likely label errors and strays, before a model trains.

One pass of EfficientNet-Lite0 (ImageNet weights, 224 px, the feature cache of petlab/engine/features.py)
over every photo gives three things at once:
- **near-copies**: each photo's nearest neighbours by feature cosine are candidates, and a candidate pair is a
  near-copy when one photo's centre is found in the other's pixels (normalised cross-correlation at a few
  scales, mirrored too) at NEAR_COPY or more. Features alone confuse two photos of one black cat with one
  photo re-encoded; pixels alone cost too much for every pair. A test or validation photo near a train
  photo is a **leak**; a pair with different labels is a **conflict**; any other pair a **duplicate**.
- **likely label errors**: out-of-fold probabilities from a logistic regression on the features
  (stratified k-fold: no photo scores its own label), then confident learning (Northcutt et al., 2021):
  class j's threshold is the mean probability of j over the photos labelled j; a photo whose given label
  is not the likeliest of the classes above their thresholds is flagged, ranked by the normalised margin
  p(suggested) - p(given). These few lines are written here rather than imported from cleanlab, which is
  AGPL-3.0: a dependency that would bind every petlab user's code to the AGPL for 20 lines of numpy.
- **strays**: ImageNet's own head on the same features gives the "not a pet" probability the server uses
  (petlab/inference/pet.py, the own-backbone view of Lite0 at 224 px); the decoder and the file headers
  give unreadable, tiny, extreme-aspect and grayscale files.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import urllib.parse
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from petlab.data.datasets import Splits
from petlab.data.near_copies import NEAR_COPY, near_copy_pairs
from petlab.engine.leaks import AUDIT_ARCH, AUDIT_SIZE, SPLIT_ORDER, readable_files
from petlab.fileio import write_csv
from petlab.inference.pet import OWN_BACKBONE_THRESHOLDS, pet_probability
from petlab.models.zoo import ARCHS
from petlab.names import AUDIT_KINDS as KINDS
from petlab.progress import progress

log = logging.getLogger(__name__)
TINY_SIDE = 64  # a photo whose short side is below this carries too little detail for a 224 px model
EXTREME_ASPECT = 3.0  # long side over short side
GRAY_SPREAD = 3  # at most this mean |R-G| + |G-B| (levels): a grayscale photo stored as RGB
FOLDS = 5
# The logistic regression's inverse L2 strength. Strong regularisation keeps each fold's model from fitting the
# flipped labels it trains on: with 5% of cats_and_dogs_filtered/train flipped (seed 0), the top-100 by margin held
# 80% of the flips at C=1, 90% at 0.1 and 96% at 0.01 (chosen there; benchmarks/audit.py measures it again on
# its own flips, and on the 37-breed set, which played no part in the choice).
LABEL_C = 0.01


@dataclass
class Finding:
    kind: str
    split: str
    file: str
    label: str
    suggested_label: str = ""
    score: float = 0.0
    partner_file: str = ""


@dataclass
class Photos:
    """Every readable photo of every split, in one order: what the audit's arrays index."""
    files: list[str]
    splits: list[str]
    labels: np.ndarray
    squares: list  # uint8 HWC arrays (rows of the decode caches' memory maps)


def copy_findings(photos: Photos, classes: list[str], pairs: list[tuple[int, int, float]]) -> list[Finding]:
    """Each near pair as one finding: a leak (a val or test photo with a copy in train), a conflict
    (different labels), or a duplicate."""
    found = []
    for i, j, score in pairs:
        si, sj = photos.splits[i], photos.splits[j]
        if SPLIT_ORDER.index(si) > SPLIT_ORDER.index(sj):
            i, j, si, sj = j, i, sj, si  # the later split's photo is the one reported (the leaked one)
        conflict = photos.labels[i] != photos.labels[j]
        kind = "conflict" if conflict else "leak" if si == "train" and sj != "train" else "duplicate"
        found.append(Finding(kind, sj, photos.files[j], classes[photos.labels[j]], classes[photos.labels[i]],
                             round(score, 4), photos.files[i]))
    return found


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0,
                              folds: int = FOLDS) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, C], scored [N] bool). Each photo is predicted by a logistic regression trained on the
    folds that do not hold it. A class with fewer than 2 photos cannot be both trained on and held out, so its
    photos are not scored (and not flagged); with fewer than 2 scorable photos per fold nothing is."""
    counts = np.bincount(labels, minlength=num_classes)
    scored = counts[labels] >= 2
    probs = np.zeros((len(labels), num_classes), np.float32)
    k = min(folds, int(counts.max()) if len(counts) else 0)
    if k < 2 or len(set(labels[scored])) < 2:
        return probs, np.zeros(len(labels), bool)
    idx = np.nonzero(scored)[0]
    with warnings.catch_warnings():  # a class with fewer photos than folds is held out in fewer folds
        warnings.simplefilter("ignore", UserWarning)
        splitter = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(idx, labels[idx]))
    for train, held in progress(splitter, desc="label check (k-fold)", unit="fold", leave=False):
        train, held = idx[train], idx[held]
        model = LogisticRegression(C=LABEL_C, max_iter=500).fit(features[train], labels[train])
        probs[np.ix_(held, model.classes_)] = model.predict_proba(features[held])
    return probs, scored


def label_error_ranking(probs: np.ndarray, labels: np.ndarray, scored: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                                np.ndarray]:
    """(flagged [N] bool, suggested [N] class, margin [N]) by confident learning: class j's threshold t_j is the
    mean p_j over scored photos labelled j; a photo is flagged when some other class j has p_j >= t_j and is the
    likeliest such class; margin = p(best other class) - p(given label), the ranking (higher: likelier an error)."""
    n, c = probs.shape
    thresholds = np.array([probs[scored & (labels == j), j].mean() if (scored & (labels == j)).any() else 1.0
                           for j in range(c)])
    given = probs[np.arange(n), labels]
    others = probs.copy()
    others[np.arange(n), labels] = -1.0
    margin = others.max(1) - given
    confident = np.where(probs >= thresholds, probs, -1.0)
    suggested = confident.argmax(1)
    flagged = scored & (confident.max(1) >= 0) & (suggested != labels)
    suggested = np.where(flagged, suggested, others.argmax(1))
    return flagged, suggested, np.where(scored, margin, -np.inf)


def file_findings(path: str, split: str, label: str, square: np.ndarray | None) -> list[Finding]:
    """Tiny, extreme-aspect and grayscale photos, from the file's header and its decoded square."""
    found = []
    try:
        with Image.open(path) as img:
            width, height = img.size
            mode = img.mode
    except OSError:
        return found
    if min(width, height) < TINY_SIDE:
        found.append(Finding("tiny", split, path, label, score=float(min(width, height))))
    if max(width, height) / max(min(width, height), 1) > EXTREME_ASPECT:
        found.append(Finding("extreme_aspect", split, path, label,
                             score=round(max(width, height) / max(min(width, height), 1), 2)))
    spread = 0.0 if square is None else colour_spread(square)
    if mode in ("L", "LA", "1", "I", "I;16", "F") or (square is not None and spread <= GRAY_SPREAD):
        found.append(Finding("grayscale", split, path, label, score=round(spread, 2)))
    return found


def colour_spread(square: np.ndarray) -> float:
    s = square.astype(np.int16)
    return float(np.abs(s[..., 0] - s[..., 1]).mean() + np.abs(s[..., 1] - s[..., 2]).mean())


def class_counts(splits: Splits) -> dict:
    """{split: {class: photos}} and the imbalance (largest class over smallest) per split."""
    out = {}
    for split in SPLIT_ORDER:
        samples = getattr(splits, split)
        if samples:
            counts = Counter(splits.classes[y] for _, y in samples)
            out[split] = {"counts": {c: counts.get(c, 0) for c in splits.classes},
                          "imbalance": round(max(counts.values()) / max(min(counts.get(c, 0) for c in splits.classes),
                                                                        1), 2)}
    return out


def audit_findings(photos: Photos, classes: list[str], features: np.ndarray, imagenet_logits: np.ndarray,
                   skipped: list[dict], seed: int = 0) -> tuple[list[Finding], dict]:
    """Every finding, and the facts behind them: every scored photo's label ranking, the pet probabilities."""
    found = copy_findings(photos, classes, near_copy_pairs(features, photos.squares))
    probs, scored = out_of_fold_probabilities(features, photos.labels, len(classes), seed)
    flagged, suggested, margin = label_error_ranking(probs, photos.labels, scored)
    order = [int(i) for i in np.argsort(-margin) if scored[i]]  # likeliest label error first
    for i in order:
        if flagged[i]:
            found.append(Finding("label_error", photos.splits[i], photos.files[i], classes[photos.labels[i]],
                                 classes[suggested[i]], round(float(margin[i]), 4)))
    pet = pet_probability(imagenet_logits)
    threshold = OWN_BACKBONE_THRESHOLDS[(AUDIT_ARCH, AUDIT_SIZE)]
    for i in np.argsort(pet):
        if pet[i] < threshold:
            found.append(Finding("not_a_pet", photos.splits[i], photos.files[i], classes[photos.labels[i]],
                                 score=round(float(pet[i]), 4)))
    for s in skipped:
        found.append(Finding("unreadable", s["split"], s["path"], s.get("label", ""), score=0.0,
                             partner_file=f"{s['reason']}: {s['detail']}"[:200]))
    for i, (path, split) in enumerate(zip(photos.files, photos.splits)):
        found += file_findings(path, split, classes[photos.labels[i]], photos.squares[i])
    ranking = [{"rank": r + 1, "split": photos.splits[i], "file": photos.files[i], "label": classes[photos.labels[i]],
                "suggested_label": classes[suggested[i]], "margin": round(float(margin[i]), 4),
                "flagged": bool(flagged[i])} for r, i in enumerate(order)]
    facts = {"ranking": ranking, "pet_probability": pet, "pet_threshold": threshold}
    return found, facts


def summary(found: list[Finding], photos: Photos, splits: Splits, facts: dict) -> dict:
    by_kind = Counter(f.kind for f in found)
    split_of = dict(zip(photos.files, photos.splits))
    test_leaks = {f.file for f in found if f.kind in ("leak", "conflict") and f.split == "test"
                  and split_of.get(f.partner_file) == "train"}
    return {"photos": len(photos.files) + by_kind.get("unreadable", 0),
            "findings": {kind: by_kind.get(kind, 0) for kind in KINDS},
            "test_photos_with_a_near_copy_in_train": len(test_leaks),
            "pets_below_the_pet_threshold": float(np.mean(facts["pet_probability"] < facts["pet_threshold"])),
            "pet_threshold": facts["pet_threshold"], "classes": class_counts(splits)}


RANKING_FIELDS = ["rank", "split", "file", "label", "suggested_label", "margin", "flagged"]


def in_data_folder(row: dict, root: str | Path, keys: tuple[str, ...]) -> dict:
    """`row` with each of `keys` that names a file under `root` made relative to it (POSIX separators)."""
    root = Path(root).resolve()
    out = dict(row)
    for key in keys:
        value = row.get(key)
        if value and Path(value).is_absolute() and Path(value).resolve().is_relative_to(root):
            out[key] = Path(value).resolve().relative_to(root).as_posix()
    return out


def write_rows(rows: list[dict], path: Path, fields: list[str]) -> None:
    write_csv(path, rows, fields)


def thumbnail(square: np.ndarray | None, size: int = 112) -> str:
    if square is None:
        return '<div class="none">unreadable</div>'
    img = Image.fromarray(np.asarray(square)).resize((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=80)
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


# What a finding's score means, per kind (the page says it above each kind's findings)
SCORE_MEANS = {
    "leak": "pixel match (normalised cross-correlation of the thumbnails, 0-1) with a training photo; 0.9+ is a copy",
    "conflict": "pixel match (0-1) with a copy that carries another label",
    "duplicate": "pixel match (0-1) with a copy in the same split",
    "label_error": "margin: how much more likely the suggested class is than the given one, from models that never "
                   "saw the photo (out-of-fold); the likeliest first",
    "not_a_pet": "ImageNet's probability that a cat or dog is shown (below the threshold here); the likeliest "
                 "strays first",
    "unreadable": "0: the reason is in its place",
    "tiny": "the photo's shorter side in pixels",
    "extreme_aspect": "the long side over the short side",
    "grayscale": "the colour spread of the photo (0: no colour at all)",
}
RANKING_ROWS = 20  # of the label ranking, on the page (label_ranking.csv has every photo)


def write_html(found: list[Finding], photos: Photos, info: dict, path: Path,
               per_kind: int = 60, ranking: list[dict] | None = None) -> None:
    """One page: the summary, class counts, then each kind's findings (at most per_kind, in rank order) with
    thumbnails of the photo and its partner."""
    where = {f: i for i, f in enumerate(photos.files)}
    square = lambda f: photos.squares[where[f]] if f in where else None  # noqa: E731
    e = html.escape

    def shown(file: str, size: int = 112) -> str:
        """The photo's thumbnail, linked to the full photo: a path relative to the page, so the link holds
        wherever the page and the data folder move together (reports/audit/ beside ../shared/data)."""
        href = urllib.parse.quote(os.path.relpath(file, path.parent))
        return f'<a href="{e(href)}" title="{e(Path(file).name)}">{thumbnail(square(file), size)}</a>'
    parts = [f"<h1>Audit of {e(info['name'])}</h1><p>{e(info['root'])}: {info['summary']['photos']} photos; "
             f"test photos with a near-copy in train: <b>{info['summary']['test_photos_with_a_near_copy_in_train']}"
             "</b></p><h2>Class counts</h2><table><tr><th>split</th><th>imbalance</th><th>counts</th></tr>"]
    for split, c in info["summary"]["classes"].items():
        parts.append(f"<tr><td>{split}</td><td>{c['imbalance']}</td><td>{e(str(c['counts']))}</td></tr>")
    parts.append("</table>")
    if ranking:
        parts.append(f"<h2>Label ranking: the {RANKING_ROWS} likeliest label errors</h2><p>Every scored photo by its "
                     "margin (how much more likely the suggested class is than the given one, out-of-fold), flagged "
                     "or not; all of them in label_ranking.csv. Review it top down.</p><table><tr><th>rank</th>"
                     "<th>split</th><th>photo</th><th>label</th><th>suggested</th><th>margin</th><th>flagged</th>"
                     "</tr>")
        for row in ranking[:RANKING_ROWS]:
            parts.append(f"<tr><td>{row['rank']}</td><td>{e(row['split'])}</td><td>{shown(row['file'], 56)}"
                         f" {e(Path(row['file']).name)}</td><td>{e(row['label'])}</td><td>{e(row['suggested_label'])}"
                         f"</td><td>{row['margin']}</td><td>{'yes' if row['flagged'] else ''}</td></tr>")
        parts.append("</table>")
    for kind in KINDS:
        rows = [f for f in found if f.kind == kind]
        parts.append(f"<h2>{kind}: {len(rows)}</h2><p><i>score: {e(SCORE_MEANS[kind])}</i></p>")
        for f in rows[:per_kind]:
            partner = shown(f.partner_file) if f.partner_file in where else ""
            parts.append(f'<div class="f">{shown(f.file)}{partner}<p>{e(f.split)}: '
                         f"{e(Path(f.file).name)}<br>label {e(f.label)}"
                         + (f" &rarr; {e(f.suggested_label)}" if f.suggested_label not in ("", f.label) else "")
                         + f"<br>score {f.score}" + (f"<br>{e(Path(f.partner_file).name)}" if f.partner_file else "")
                         + "</p></div>")
        if len(rows) > per_kind:
            parts.append(f"<p>... and {len(rows) - per_kind} more in findings.csv</p>")
    style = ("<style>body{font-family:sans-serif;margin:1em}.f{display:inline-block;width:240px;vertical-align:top;"
             "margin:4px;font-size:11px}.f img{margin-right:2px}.none{width:112px;height:112px;background:#ddd}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}table{border-collapse:collapse}</style>")
    path.write_text(f"<!doctype html><meta charset=utf-8><title>Audit: {e(info['name'])}</title>{style}"
                    + "".join(parts))


# ---------------------------------------------------------------- the whole audit


def collect_photos(splits: Splits, decoded: dict) -> tuple[Photos, list[dict]]:
    """The readable photos of every split in one order (audit_features' rows), and the unreadable ones (with
    their split and label)."""
    readable = readable_files(splits, decoded)
    skipped = []
    for split, images in decoded.items():
        label_of = dict(getattr(splits, split))
        skipped += [{**s, "split": split, "label": splits.classes[label_of[s["path"]]]} for s in images.skipped]
    labels = np.concatenate([images.labels for images in decoded.values()])
    squares = [square for images in decoded.values() for square in images.array]
    return Photos([f for _, f in readable], [s for s, _ in readable], labels, squares), skipped


def run_audit(data_dir: str | None, task: str, out_dir: Path, dataset: str | None = None,
              labels_csv: str | None = None, cache_dir: str | None = None, seed: int = 0,
              tracking: str = "comet") -> dict:
    """Audit one dataset; writes findings.csv, index.html and summary.json under out_dir. Returns the summary."""
    import json

    import torch

    from petlab.data.datasets import load_splits
    from petlab.engine.leaks import audit_config, audit_features
    from petlab.paths import cache_root
    from petlab.tracking.comet import create_tracker

    splits = load_splits(dataset, task, data_dir, None, 0.2, seed, download=False, carve=False,
                         labels_csv=labels_csv)
    cfg = audit_config(task, seed, tracking)
    decoded, features, model = audit_features(splits, cache_root(cache_dir), cfg)
    with torch.inference_mode():
        logits = model.get_submodule(ARCHS[AUDIT_ARCH].head)(torch.from_numpy(features)).numpy()
    photos, skipped = collect_photos(splits, decoded)
    found, facts = audit_findings(photos, splits.classes, features, logits, skipped, seed)
    # paths relative to the data folder (its name only in the summary): a report travels to another machine,
    # and `--exclude findings.csv` resolves them against that run's own data folder
    info = {"name": out_dir.name, "root": Path(splits.root).name, "dataset": splits.dataset, "task": task,
            "summary": summary(found, photos, splits, facts)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_rows([in_data_folder(asdict(f), splits.root, ("file", "partner_file")) for f in found],
               out_dir / "findings.csv", list(Finding.__dataclass_fields__))
    write_rows([in_data_folder(row, splits.root, ("file",)) for row in facts["ranking"]], out_dir / "label_ranking.csv",
               RANKING_FIELDS)
    write_html(found, photos, info, out_dir / "index.html", ranking=facts["ranking"])
    (out_dir / "summary.json").write_text(json.dumps(info, indent=2) + "\n")
    tracker = create_tracker(cfg, out_dir)
    tracker.add_tags(["audit", task])
    tracker.log_parameters({"audit.data": splits.root, "audit.dataset": splits.dataset, "audit.near_copy": NEAR_COPY,
                            "audit.arch": AUDIT_ARCH, "audit.folds": FOLDS})
    tracker.log_metrics({f"audit_{kind}": n for kind, n in info["summary"]["findings"].items()}
                        | {"audit_test_photos_with_a_near_copy_in_train":
                           info["summary"]["test_photos_with_a_near_copy_in_train"]})
    tracker.log_text("audit summary", json.dumps(info["summary"], indent=2))
    tracker.end()
    return info

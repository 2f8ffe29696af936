"""A version's int8 twin at promotion (`promote.py --int8`): model.int8.onnx, and pet_view.int8.onnx where the
version answers "is this a pet?" from its own pass, quantised (petlab/export/quantize.py) on the run's training
photos and checked as the server would answer with them: the top-1 agreement with the fp32 files on the
validation photos, the test accuracy of both, and for the pet view the agreement of the pet verdict. The twin is
served only where every check passes; the card's "int8" entry gives the figures either way, and why. A twin that
fails is not kept (nothing unverified ships)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np

from petlab.data.images import load_rgb
from petlab.errors import ExportError
from petlab.export.quantize import DEFAULT_METHOD, DEFAULT_PHOTOS, calibration_batches, quantize_onnx, top1, verdict
from petlab.inference.model import MODEL_ONNX, PET_VIEW_ONNX, LoadedModel, int8_file
from petlab.inference.runtime import OnnxSession, cpu_model, int8_kernels

log = logging.getLogger(__name__)
BATCH = 32


def calibration_photos(train: list[tuple[str, int]], count: int, seed: int) -> list[str]:
    """`count` training photos, the classes taking turns (a seeded shuffle within each), so each is seen."""
    by_class: dict[int, list[str]] = {}
    for path, label in train:
        by_class.setdefault(label, []).append(str(path))
    rng = random.Random(seed)
    for paths in by_class.values():
        rng.shuffle(paths)
    picked, turn = [], 0
    while len(picked) < min(count, len(train)):
        picked += [paths[turn] for _, paths in sorted(by_class.items()) if turn < len(paths)][:count - len(picked)]
        turn += 1
    return picked


def served(folder: Path, card: dict, pre, model_file: str, pet_file: str | None) -> LoadedModel:
    """The version as the server answers with these files in `folder` (its TTA; the pet view answers the logits
    too): what the int8 check compares and what engine/latency.py times."""
    return LoadedModel(card.get("task", ""), "int8-check", 0, card, "onnx", OnnxSession(folder / model_file), pre,
                       OnnxSession(folder / pet_file) if pet_file else None)


def answers(model: LoadedModel, files: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities, pet probabilities or None) for the photos, uncalibrated (temperature keeps the top-1)."""
    probs, pets = [], []
    for i in range(0, len(files), BATCH):
        p, pet = model.probabilities_and_pet([load_rgb(f) for f in files[i:i + BATCH]], calibrated=False)
        probs.append(p)
        pets.append(pet)
    return np.concatenate(probs), (np.concatenate(pets) if pets and pets[0] is not None else None)


def write_int8(folder: Path, card: dict, pre, train: list[tuple[str, int]], predictions: dict, seed: int,
               photos: int = DEFAULT_PHOTOS, method: str = DEFAULT_METHOD, calibration: list[str] | None = None,
               calibrated_on: str = "the run's training photos (never validation or test)") -> dict:
    """Quantise the version's served ONNX files in `folder` and check them; returns the card's "int8" entry.
    calibration: the photos to calibrate on, instead of `photos` of `train` (calibrated_on says what they are)."""
    view = card.get("not_a_pet") or {}
    pet_file = PET_VIEW_ONNX if view.get("file") and view.get("onnx") else None
    files = [MODEL_ONNX, *([pet_file] if pet_file else [])]
    calibration = calibration or calibration_photos(train, photos, seed)
    batches = calibration_batches(pre, calibration, BATCH)
    for name in files:
        quantize_onnx(folder / name, folder / int8_file(name), batches, method)
    fp32 = served(folder, card, pre, MODEL_ONNX, pet_file)
    int8 = served(folder, card, pre, int8_file(MODEL_ONNX), int8_file(pet_file) if pet_file else None)
    if not predictions.get("val"):
        raise ExportError("the int8 check needs the run's validation predictions to compare on")
    # The agreement is checked on photos the served model never trained on: the validation photos, or where the
    # run was refit on every training photo (cross-validation: its validation predictions are out-of-fold, but
    # the served model saw those photos) the test photos, whose labels the agreement does not read.
    trained_on, calibrated = {str(f) for f, _ in train}, set(calibration)
    val_pairs = [(f, t) for f, t in zip(predictions["val"]["files"], predictions["val"]["targets"], strict=True)
                 if f not in calibrated]
    kept = [(f, t) for f, t in val_pairs if str(f) not in trained_on]
    checked_photos = "validation photos (never trained on)"
    if not kept and predictions.get("test"):
        kept = list(zip(predictions["test"]["files"], predictions["test"]["targets"], strict=True))
        checked_photos = ("test photos: the served model was refit on every training photo, so no validation "
                          "photo is unseen (the agreement reads no label)")
    if not kept:  # a sweep's trial, which never looks at test: its out-of-fold photos, said so
        kept = val_pairs
        checked_photos = "out-of-fold validation photos (the refit trained on them; no test photo was used)"
    val, val_targets = [f for f, _ in kept], np.asarray([t for _, t in kept])
    (val32, pets32), (val8, pets8) = answers(fp32, val), answers(int8, val)
    agreement = float((top1(val32) == top1(val8)).mean())
    val_accuracy = {"val_accuracy_fp32": float((top1(val32) == val_targets).mean()),
                    "val_accuracy_int8": float((top1(val8) == val_targets).mean())} \
        if checked_photos.startswith("validation") else {}
    fp32_test = int8_test = None
    if predictions.get("test"):
        test, targets = list(predictions["test"]["files"]), np.asarray(predictions["test"]["targets"])
        fp32_test = float((top1(answers(fp32, test)[0]) == targets).mean())
        int8_test = float((top1(answers(int8, test)[0]) == targets).mean())
    extra = None
    if pet_file:  # the "not a pet" verdict must agree as often as the top-1
        threshold = view["threshold"]
        extra = {"val_pet_verdict_agreement": float(((pets32 >= threshold) == (pets8 >= threshold)).mean())}
    entry = {"files": [int8_file(f) for f in files], "checked_photos": checked_photos,
             "checked_on": {"cpu": cpu_model(), "int8_kernels": int8_kernels()},
             "calibration": {
        "method": method, "photos": len(calibration), "from": calibrated_on,
        "recipe": "ONNX Runtime quantize_static, QDQ, int8 weights per channel, uint8 activations; the "
                  "classifier's Gemm/MatMul in fp32"},
             **val_accuracy, **verdict(agreement, len(val), fp32_test, int8_test, extra)}
    if not entry["served"]:
        for name in entry["files"]:
            (folder / name).unlink(missing_ok=True)
        entry["files"] = []  # deleted: never named
        log.warning("int8 is not served: %s", entry["why"])
    else:
        log.info("int8 serves: top-1 agreement %.2f%% on %d validation photos%s", 100 * agreement, len(val),
                 "" if fp32_test is None else f"; test accuracy {fp32_test:.2%} -> {int8_test:.2%}")
    return entry

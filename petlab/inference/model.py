"""A registered version, loaded to predict: its ONNX export on ONNX Runtime (or, failing that, a PyTorch
export) with its own card's preprocessing, test-time augmentation and temperature, and, when the card has
one, the export that also answers "is this a pet at all?" from the same forward pass. The server, the
Space, predict.py and the promotion gate all predict through it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from petlab.calibration import apply_temperature
from petlab.errors import ExportError
from petlab.inference.heatmap import PhotoHeatmap
from petlab.inference.preprocessing import Preprocessing
from petlab.inference.runtime import OnnxSession, int8_kernels

log = logging.getLogger(__name__)

# A version's files, by format: the one place their names are written (petlab/export uses these too)
EXPORT_FILES = {"onnx": "model.onnx", "torch_export": "model.pt2", "torchscript": "model.ts"}
# (logits, pet probability) in one pass, for a model with ImageNet's own backbone
PET_VIEW_FILES = {"onnx": "pet_view.onnx", "torch_export": "pet_view.pt2"}
STATE_DICT = "state_dict.pt"  # what "eager" loads
# The served outputs (model.onnx's, or pet_view.onnx's) and the class-activation maps [N, classes, h, w] last:
# what explain=true runs (petlab/models/cam.py)
EXPLAIN_ONNX = "explain.onnx"
MODEL_ONNX, PET_VIEW_ONNX = EXPORT_FILES["onnx"], PET_VIEW_FILES["onnx"]


def int8_file(onnx_file: str) -> str:
    """An ONNX file's int8 twin (promote.py --int8): model.onnx -> model.int8.onnx"""
    return onnx_file.removesuffix(".onnx") + ".int8.onnx"


def served_file(fmt: str, files: dict[str, str]) -> str:
    """The file behind a format ("onnx_int8": the ONNX file's twin; "eager": the state dict)."""
    return int8_file(files["onnx"]) if fmt == "onnx_int8" else files.get(fmt, STATE_DICT)
# "torch": predict with PyTorch everywhere; "onnxruntime_fp32": ONNX, never an int8 twin (for comparisons)
RUNTIME_SWITCH = "PETLAB_RUNTIME"


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float32)
    exp = np.exp(z - z.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass
class LoadedModel:
    task: str
    name: str
    version: int
    card: dict
    fmt: str  # which file serves: "onnx" or "onnx_int8" (on ONNX Runtime), "torch_export", "torchscript", "eager"
    module: Callable  # float32 NCHW numpy -> logits numpy
    pre: Preprocessing
    pet_module: Callable | None = None  # x -> (logits, ImageNet pet probability), when the card has a pet view
    pet_fmt: str | None = None
    refused: dict[str, str] = field(default_factory=dict)  # file -> why it was not loaded (damaged, unsafe)
    fingerprint: str = ""  # files_fingerprint of what answers: the files that loaded, and the card as read
    folder: Path | None = None  # the registry's version folder (None: a run's model, not registered)
    # () -> (format, callable x -> (*outputs, maps)) or None: loaded the first time a photo is explained
    explain_loader: Callable | None = None
    _explainer: tuple | None = field(default=None, repr=False)
    _explain_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def classes(self) -> list[str]:
        return self.card["classes"]

    def probabilities(self, images: list, calibrated: bool = True) -> np.ndarray:
        """RGB PIL images -> [N, classes] probabilities, preprocessed exactly as the card says and, when
        the card holds a temperature, calibrated (the export itself stays raw logits)."""
        return self.probabilities_and_pet(images, calibrated)[0]

    def explainer(self) -> tuple[str, Callable] | None:
        """(format, x -> (*served outputs, class maps)) for this version, or None where it has none."""
        with self._explain_lock:
            if self._explainer is None:
                found = self.explain_loader() if self.explain_loader is not None else None
                self._explainer = (found,)
            return self._explainer[0]

    def probabilities_and_pet(self, images: list, calibrated: bool = True, explain: bool = False) \
            -> tuple[np.ndarray, np.ndarray | None]:
        """probabilities(), and each photo's ImageNet pet probability when this version computes it in the
        same pass (pet_view.*), else None. With `explain`, a third item: the class-activation maps of the same
        pass [N, classes, h, w] (ExportError where the version has no explainer)."""
        batch = self.pre.batch_array(images)
        maps = None
        if explain:
            found = self.explainer()
            if found is None:
                raise ExportError(f"{self.name} v{self.version} has no class-activation export ({EXPLAIN_ONNX}) "
                                  f"and no PyTorch to compute one")
            *outputs, maps = found[1](batch)
            logits, pet = outputs[0], (outputs[1] if len(outputs) > 1 else None)
            if pet is None and self.pet_module is not None:  # the explainer wraps model.onnx, not the pet view
                pet = self.pet_module(batch)[1]
        else:
            logits, pet = self.pet_module(batch) if self.pet_module is not None else (self.module(batch), None)
        probs = softmax(logits)
        if self.card.get("tta") == "flip":  # the card's metrics averaged each photo with its mirror image
            probs = (probs + softmax(self.module(np.ascontiguousarray(batch[..., ::-1])))) / 2
        if calibrated and self.temperature != 1.0:
            probs = apply_temperature(probs, self.temperature).astype(np.float32)
        pet = None if pet is None else np.asarray(pet, dtype=np.float32)
        return (probs, pet, np.asarray(maps, dtype=np.float32)) if explain else (probs, pet)

    @property
    def pet_threshold(self) -> float | None:
        """The threshold measured for this version's own pet probability (None: it has none)."""
        return (self.card.get("not_a_pet") or {}).get("threshold") if self.pet_module is not None else None

    @property
    def temperature(self) -> float:
        return float((self.card.get("calibration") or {}).get("temperature", 1.0))

    def predict_images(self, load, paths: list, batch_size: int = 32, calibrated: bool = True) -> np.ndarray:
        """Probabilities for image files, in batches; `load(path)` decodes one to RGB (petlab.data.images)."""
        parts = [self.probabilities([load(p) for p in paths[i:i + batch_size]], calibrated)
                 for i in range(0, len(paths), batch_size)]
        return np.concatenate(parts) if parts else np.empty((0, len(self.classes)), dtype=np.float32)

    def predict(self, image, top_k: int = 5) -> list[dict]:
        return self.predict_with_pet(image, top_k)[0]

    def predict_with_pet(self, image, top_k: int = 5) -> tuple[list[dict], float | None]:
        """The top-k for one photo, and its ImageNet pet probability when this version computes it."""
        return self.predict_many_with_pet([image], top_k)[0]

    def predict_many_with_pet(self, images: list, top_k: int = 5, explain: bool = False,
                              explain_class: str | None = None) -> list[tuple]:
        """predict_with_pet for several photos in one forward pass; with `explain`, each answer has a third item:
        the PhotoHeatmap of `explain_class` (default: the photo's top-1), from the same pass."""
        probs, pet, *maps = self.probabilities_and_pet(images, explain=explain)
        k = min(top_k, len(self.classes))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        answers = [([{"label": self.classes[i], "probability": round(float(probs[row, i]), 6)} for i in ids],
                    float(pet[row]) if pet is not None else None)
                   for row, ids in enumerate(order)]
        if not explain:
            return answers
        targets = [self.class_index(explain_class) if explain_class else int(ids[0]) for ids in order]
        return [(*answer, PhotoHeatmap.from_cam(self.classes[t], maps[0][row, t], images[row], self.pre))
                for row, (answer, t) in enumerate(zip(answers, targets))]

    def class_index(self, label: str) -> int:
        """The index of a class by its name; ValueError naming the classes otherwise."""
        try:
            return self.classes.index(label)
        except ValueError:
            shown = ", ".join(self.classes[:10]) + (", ..." if len(self.classes) > 10 else "")
            raise ValueError(f"unknown class {label!r}; this model's classes are {shown}") from None


def files_fingerprint(paths: list, *extra: str) -> str:
    """The first 12 hex digits of a SHA-256 over the files' contents (and `extra` strings): which model
    answered, whatever its name and version say."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    for text in extra:
        digest.update(text.encode())
    return digest.hexdigest()[:12]


def torch_first() -> bool:
    return os.environ.get(RUNTIME_SWITCH, "").strip().lower() == "torch"


def int8_allowed() -> bool:
    return os.environ.get(RUNTIME_SWITCH, "").strip().lower() != "onnxruntime_fp32"


def load_onnx(path: Path, refused: dict[str, str]):
    """The ONNX file on ONNX Runtime, or None (missing, or refused with the reason added to `refused`)."""
    if not path.is_file():
        return None
    try:
        return OnnxSession(path)
    except ExportError as exc:
        log.warning("could not load %s (%s); trying the next format", path.name, exc)
        refused[path.name] = str(exc).splitlines()[0][:300]
        return None


def load_served_onnx(folder: Path, onnx_file: str, int8: bool, refused: dict[str, str]) -> tuple:
    """(session, "onnx_int8") from the int8 twin where the card says its check passed, else (session, "onnx")
    from the fp32 file; (None, None) where neither loads."""
    if int8:
        session = load_onnx(folder / int8_file(onnx_file), refused)
        if session is not None:
            return session, "onnx_int8"
    session = load_onnx(folder / onnx_file, refused)
    return session, ("onnx" if session is not None else None)


def load_version(registry, task: str, version: int, fallback: Callable | None = None,
                 explain_fallback: Callable | None = None) -> LoadedModel:
    """A registered version as it serves: model.onnx (and pet_view.onnx) on ONNX Runtime, or their int8 twins
    where the card's int8 check passed (export/int8.py); where one is
    missing or does not load (or PETLAB_RUNTIME=torch), `fallback` loads the weights-only state dict
    (petlab/registry/torch_fallback.py: load_weights_only; the caller passes it, so this package never
    imports torch; the server passes none, since it serves ONNX only). Without one, a version that ONNX
    Runtime cannot serve raises ExportError. Its explainer
    (class-activation maps) is loaded on first use: explain.onnx, else `explain_fallback(registry, task,
    version)` (the eager model in PyTorch), else none."""
    card = registry.card(task, version)
    folder = Path(registry.version_dir(task, version))
    refused: dict[str, str] = {}
    own_view = (card.get("not_a_pet") or {}).get("file") is not None
    fmt = pet_fmt = module = pet_module = None
    int8 = bool((card.get("int8") or {}).get("served")) and int8_allowed()
    checked_on = ((card.get("int8") or {}).get("checked_on") or {}).get("int8_kernels")
    if int8 and checked_on != int8_kernels():  # the check's figures hold for the kernels it ran on only
        refused[int8_file(MODEL_ONNX)] = (f"its int8 check ran on a CPU with {checked_on or 'unrecorded'} int8 "
                                          f"kernels and this one has {int8_kernels()}: fp32 serves")
        log.warning("%s v%s: %s", task, version, refused[int8_file(MODEL_ONNX)])
        int8 = False
    if not torch_first():
        module, fmt = load_served_onnx(folder, MODEL_ONNX, int8, refused)
        if own_view and card["not_a_pet"].get("onnx"):
            pet_module, pet_fmt = load_served_onnx(folder, PET_VIEW_ONNX, int8, refused)
    if module is None and fallback is None:
        raise ExportError(f"{task} v{version}: only ONNX is served (a PyTorch export runs code when loaded), and "
                          f"{MODEL_ONNX} does not load ({refused.get(MODEL_ONNX, 'missing')})")
    if fallback is not None and (module is None or (own_view and pet_module is None)):
        found = fallback(registry, task, version, refused, need_model=module is None,
                         need_pet_view=own_view and pet_module is None)
        if module is None:
            fmt, module = found["model"]
        if own_view and pet_module is None and found.get("pet_view"):
            pet_fmt, pet_module = found["pet_view"]
    answering = [folder / served_file(fmt, EXPORT_FILES),
                 *([folder / served_file(pet_fmt, PET_VIEW_FILES)] if pet_fmt else [])]
    fingerprint = files_fingerprint(answering, json.dumps(card, sort_keys=True))

    def explain_loader():
        session = None if torch_first() else load_onnx(folder / EXPLAIN_ONNX, refused)
        if session is not None:
            return "onnx", session
        return explain_fallback(registry, task, version) if explain_fallback is not None else None

    return LoadedModel(task, card["name"], version, card, fmt, module, Preprocessing.from_dict(card["preprocessing"]),
                       pet_module, pet_fmt, refused, fingerprint, folder, explain_loader)


"""A registered version, loaded to predict: its export (or eager weights) with its own card's preprocessing,
test-time augmentation and temperature, and, when the card has one, the export that also answers "is this a pet
at all?" from the same forward pass. The server and the promotion gate predict through it."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import torch

from petlab.calibration import apply_temperature
from petlab.data.images import load_rgb
from petlab.data.transforms import Preprocessing
from petlab.export import EXPORT_FILES, PET_VIEW_FILE, PET_VIEW_FILES, first_loadable, preferred_export
from petlab.registry.store import Registry

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    task: str
    name: str
    version: int
    card: dict
    fmt: str  # which file serves: "onnx" (on ONNX Runtime), "torch_export", "torchscript", or "eager"
    module: object
    pre: Preprocessing
    pet_module: object | None = None  # x -> (logits, ImageNet pet probability), when the card has a pet view
    pet_fmt: str | None = None
    refused: dict[str, str] = field(default_factory=dict)  # file -> why it was not loaded (damaged, unsafe)
    fingerprint: str = ""  # files_fingerprint of what answers: the files that loaded, and the card as read

    @property
    def classes(self) -> list[str]:
        return self.card["classes"]

    def probabilities(self, images: list, calibrated: bool = True) -> torch.Tensor:
        """RGB PIL images -> [N, classes] probabilities, preprocessed exactly as the card says and, when
        the card holds a temperature, calibrated (the export itself stays raw logits)."""
        return self.probabilities_and_pet(images, calibrated)[0]

    @torch.inference_mode()
    def probabilities_and_pet(self, images: list, calibrated: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """probabilities(), and each photo's ImageNet pet probability when this version computes it in the
        same pass (pet_view.pt2), else None."""
        batch = self.pre.normalize(torch.stack([self.pre.eval_tensor(img) for img in images]))
        logits, pet = self.pet_module(batch) if self.pet_module is not None else (self.module(batch), None)
        probs = torch.softmax(logits.float(), dim=1)
        if self.card.get("tta") == "flip":  # the card's metrics averaged each photo with its mirror image
            probs = (probs + torch.softmax(self.module(batch.flip(3)).float(), dim=1)) / 2
        if calibrated and self.temperature != 1.0:
            probs = apply_temperature(probs, self.temperature)
        return probs, pet

    @property
    def pet_threshold(self) -> float | None:
        """The threshold measured for this version's own pet probability (None: it has none)."""
        return (self.card.get("not_a_pet") or {}).get("threshold") if self.pet_module is not None else None

    @property
    def temperature(self) -> float:
        return float((self.card.get("calibration") or {}).get("temperature", 1.0))

    def predict_files(self, paths: list, batch_size: int = 32, calibrated: bool = True) -> torch.Tensor:
        """Probabilities for image files, in batches."""
        parts = [self.probabilities([load_rgb(p) for p in paths[i:i + batch_size]], calibrated)
                 for i in range(0, len(paths), batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, len(self.classes))

    def predict(self, image, top_k: int = 5) -> list[dict]:
        return self.predict_with_pet(image, top_k)[0]

    def predict_with_pet(self, image, top_k: int = 5) -> tuple[list[dict], float | None]:
        """The top-k for one photo, and its ImageNet pet probability when this version computes it."""
        return self.predict_many_with_pet([image], top_k)[0]

    def predict_many_with_pet(self, images: list, top_k: int = 5) -> list[tuple[list[dict], float | None]]:
        """predict_with_pet for several photos in one forward pass."""
        probs, pet = self.probabilities_and_pet(images)
        values, indices = probs.topk(min(top_k, len(self.classes)), dim=1)
        return [([{"label": self.classes[i], "probability": round(float(v), 6)} for v, i in zip(vs, ids)],
                 float(pet[row]) if pet is not None else None)
                for row, (vs, ids) in enumerate(zip(values.tolist(), indices.tolist()))]


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


def load_eager(registry: Registry, task: str, version: int) -> torch.nn.Module:
    """A registered version's eager model, from its state dict, in eval mode."""
    from petlab.models import rebuild_trained

    card = registry.card(task, version)
    state = torch.load(registry.version_dir(task, version) / "state_dict.pt", map_location="cpu", weights_only=True)
    return rebuild_trained(card["arch"], len(card["classes"]), state, card.get("dropout"))


def load_version(registry: Registry, task: str, version: int) -> LoadedModel:
    card = registry.card(task, version)
    refused: dict[str, str] = {}
    try:
        fmt, module = preferred_export(registry.version_dir(task, version), refused)
    except Exception as exc:  # noqa: BLE001 - an old or damaged export: serve the eager weights
        log.warning("serving %s v%d from its state dict: %s", task, version, exc)
        fmt, module = "eager", load_eager(registry, task, version)
    pet_fmt = pet_module = None
    entry = card.get("not_a_pet") or {}
    if entry.get("file") == PET_VIEW_FILE:
        files = {fmt: name for fmt, name in PET_VIEW_FILES.items() if fmt == "torch_export" or entry.get(fmt)}
        try:
            pet_fmt, pet_module = first_loadable(registry.version_dir(task, version), files, refused)
        except Exception as exc:  # noqa: BLE001 - the separate view answers instead, one forward pass dearer
            log.warning("%s v%d: could not load its pet view (%s); using the separate ImageNet view", task, version,
                        exc)
    folder = registry.version_dir(task, version)
    answering = [EXPORT_FILES.get(fmt, "state_dict.pt"), *([PET_VIEW_FILES[pet_fmt]] if pet_fmt else [])]
    fingerprint = files_fingerprint([folder / name for name in answering], json.dumps(card, sort_keys=True))
    return LoadedModel(task, card["name"], version, card, fmt, module, Preprocessing.from_dict(card["preprocessing"]),
                       pet_module, pet_fmt, refused, fingerprint)

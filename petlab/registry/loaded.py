"""A registered version, loaded to predict: its export (or eager weights) with its own card's preprocessing,
test-time augmentation and temperature. The server and the promotion gate predict through it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from petlab.calibration import apply_temperature
from petlab.data.images import load_rgb
from petlab.data.transforms import Preprocessing
from petlab.export import preferred_export
from petlab.registry.store import Registry

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    task: str
    name: str
    version: int
    card: dict
    fmt: str
    module: object
    pre: Preprocessing

    @property
    def classes(self) -> list[str]:
        return self.card["classes"]

    @torch.inference_mode()
    def probabilities(self, images: list, calibrated: bool = True) -> torch.Tensor:
        """RGB PIL images -> [N, classes] probabilities, preprocessed exactly as the card says and, when
        the card holds a temperature, calibrated (the export itself stays raw logits)."""
        batch = self.pre.normalize(torch.stack([self.pre.eval_tensor(img) for img in images]))
        probs = torch.softmax(self.module(batch).float(), dim=1)
        if self.card.get("tta") == "flip":  # the card's metrics averaged each photo with its mirror image
            probs = (probs + torch.softmax(self.module(batch.flip(3)).float(), dim=1)) / 2
        if calibrated and self.temperature != 1.0:
            probs = apply_temperature(probs, self.temperature)
        return probs

    @property
    def temperature(self) -> float:
        return float((self.card.get("calibration") or {}).get("temperature", 1.0))

    def predict_files(self, paths: list, batch_size: int = 32, calibrated: bool = True) -> torch.Tensor:
        """Probabilities for image files, in batches."""
        parts = [self.probabilities([load_rgb(p) for p in paths[i:i + batch_size]], calibrated)
                 for i in range(0, len(paths), batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, len(self.classes))

    def predict(self, image, top_k: int = 5) -> list[dict]:
        probs = self.probabilities([image])[0]
        values, indices = probs.topk(min(top_k, len(self.classes)))
        return [{"label": self.classes[i], "probability": round(float(v), 6)} for v, i in zip(values, indices)]


def load_eager(registry: Registry, task: str, version: int) -> torch.nn.Module:
    """A registered version's eager model, from its state dict, in eval mode."""
    from petlab.models import build_model

    card = registry.card(task, version)
    module, _ = build_model(card["arch"], len(card["classes"]), pretrained=False)
    state = torch.load(registry.version_dir(task, version) / "state_dict.pt", map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    return module.eval()


def load_version(registry: Registry, task: str, version: int) -> LoadedModel:
    card = registry.card(task, version)
    try:
        fmt, module = preferred_export(registry.version_dir(task, version))
    except Exception as exc:  # noqa: BLE001 - an old or damaged export: serve the eager weights
        log.warning("serving %s v%d from its state dict: %s", task, version, exc)
        fmt, module = "eager", load_eager(registry, task, version)
    return LoadedModel(task, card["name"], version, card, fmt, module, Preprocessing.from_dict(card["preprocessing"]))

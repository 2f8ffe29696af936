"""The PyTorch side of predicting with a registered version: its eager weights, read from `state_dict.pt`
with `torch.load(weights_only=True)`, where its ONNX files are missing or refused, or where
PETLAB_RUNTIME=torch asks for them (predict.py, the promotion gate). petlab/inference/model.py's
load_version takes `load_weights_only` as its fallback from the caller.

A version's `model.pt2`, `pet_view.pt2` and `model.ts` are never loaded here, nor anywhere a registry is
read: loading them runs code. torch.export.load turns the `guards_code` of the archive's models/model.json
into Python source and exec()s it, and TorchScript runs the code its archive holds. They stay export
artefacts for users who trust the file. Only ONNX and a weights-only state dict are inert. The server
takes no fallback at all: a version ONNX Runtime cannot serve is refused, and /api/health says why."""

from __future__ import annotations

import logging

import numpy as np
import torch

from petlab.inference.model import EXPORT_FILES, PET_VIEW_FILES

log = logging.getLogger(__name__)
NEVER_LOADED = "never loaded: loading a PyTorch export runs code (torch.export's guards, TorchScript)"


class TorchAsNumpy:
    """A torch module (or export) called as the inference package calls a model: float32 NCHW numpy in,
    numpy out (a tuple where the module returns several tensors)."""

    def __init__(self, module):
        self.module = module

    @torch.inference_mode()
    def __call__(self, x: np.ndarray):
        out = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        if isinstance(out, tuple):
            return tuple(o.float().numpy() for o in out)
        return out.float().numpy()


def load_eager(registry, task: str, version: int) -> torch.nn.Module:
    """A registered version's eager model, from its state dict, in eval mode."""
    from petlab.models import rebuild_trained

    card = registry.card(task, version)
    state = torch.load(registry.version_dir(task, version) / "state_dict.pt", map_location="cpu", weights_only=True)
    return rebuild_trained(card["arch"], len(card["classes"]), state, card.get("dropout"))


def load_weights_only(registry, task: str, version: int, refused: dict[str, str], need_model: bool,
                      need_pet_view: bool) -> dict:
    """{"model": ("eager", callable)} when need_model, from the weights-only state dict, and when need_pet_view
    {"pet_view": ("eager", x -> (logits, pet probability))}: the own-backbone view rebuilt from the same state
    dict and the bundled ImageNet head (models/pet_view.py), as promotion built it, or None where that check no
    longer holds (the separate view answers then). The PyTorch exports of the version are named in `refused`,
    never loaded."""
    folder = registry.version_dir(task, version)
    for name in (*EXPORT_FILES.values(), *PET_VIEW_FILES.values()):
        if not name.endswith(".onnx") and (folder / name).is_file():
            refused.setdefault(name, NEVER_LOADED)
    found: dict = {}
    model = load_eager(registry, task, version)
    if need_model:
        log.warning("%s v%d: predicting from its state dict (weights only)", task, version)
        found["model"] = ("eager", TorchAsNumpy(model))
    if need_pet_view:
        from petlab.models.pet_view import OwnBackboneView, own_backbone_head

        card = registry.card(task, version)
        head = own_backbone_head(model, card["arch"], card["preprocessing"]["image_size"])
        found["pet_view"] = ("eager", TorchAsNumpy(OwnBackboneView(model, card["arch"], head, len(card["classes"])))) \
            if head is not None else None
    return found


def load_eager_explain(registry, task: str, version: int) -> tuple[str, TorchAsNumpy] | None:
    """("eager", x -> (logits, class maps)) from the version's state dict, for a version with no usable
    explain.onnx (promoted before it existed, or PETLAB_RUNTIME=torch); None where the architecture has no
    exact map (models/cam.py)."""
    from petlab.models import ARCHS
    from petlab.models.cam import ClassMaps

    arch = registry.card(task, version)["arch"]
    if not ARCHS[arch].exact_cam:
        return None
    model = load_eager(registry, task, version)
    return "eager", TorchAsNumpy(ClassMaps(model, model, arch))

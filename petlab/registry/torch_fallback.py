"""The PyTorch side of serving: a version's torch exports (or its eager weights) where its ONNX files are
missing or refused, or where PETLAB_RUNTIME=torch asks for them. petlab/inference/model.py's load_version
takes `load_torch_formats` as its fallback from the caller; the server imports this module only when
ONNX Runtime cannot serve (serving.torch_formats_if_installed), so serving from ONNX never imports torch."""

from __future__ import annotations

import logging

import numpy as np
import torch

from petlab.export import EXPORT_FILES, PET_VIEW_FILE, first_loadable

log = logging.getLogger(__name__)


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


def load_torch_formats(registry, task: str, version: int, refused: dict[str, str], need_model: bool,
                       need_pet_view: bool) -> dict:
    """{"model": (format, callable)} when need_model (a torch export, else the eager weights) and
    {"pet_view": (format, callable) or None} when need_pet_view; each file that failed is added to `refused`."""
    folder = registry.version_dir(task, version)
    torch_only = {fmt: name for fmt, name in EXPORT_FILES.items() if fmt != "onnx"}
    found: dict = {}
    if need_model:
        try:
            fmt, module = first_loadable(folder, torch_only, refused)
        except Exception as exc:  # noqa: BLE001 - an old or damaged export: serve the eager weights
            log.warning("serving %s v%d from its state dict: %s", task, version, exc)
            fmt, module = "eager", load_eager(registry, task, version)
        found["model"] = (fmt, TorchAsNumpy(module))
    if need_pet_view:
        try:
            fmt, module = first_loadable(folder, {"torch_export": PET_VIEW_FILE}, refused)
            found["pet_view"] = (fmt, TorchAsNumpy(module))
        except Exception as exc:  # noqa: BLE001 - the separate view answers instead, one forward pass dearer
            log.warning("%s v%d: could not load its pet view (%s); using the separate ImageNet view", task, version,
                        exc)
            found["pet_view"] = None
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

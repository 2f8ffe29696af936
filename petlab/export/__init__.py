"""Exported models: ONNX (served on ONNX Runtime), TorchScript (traced) and torch.export (.pt2), each verified
against eager."""

from petlab.export.exporter import (
    EXPORT_FILES,
    PET_VIEW_FILE,
    PET_VIEW_FILES,
    ExportError,
    export_and_verify,
    export_pet_view,
    load_exported,
)
from petlab.export.onnx import OnnxModel, runtime

__all__ = ["EXPORT_FILES", "PET_VIEW_FILE", "PET_VIEW_FILES", "ExportError", "OnnxModel", "export_and_verify",
           "export_pet_view", "load_exported", "runtime"]

"""Exported models: TorchScript (traced) and torch.export (.pt2), each verified against eager."""

from petlab.export.exporter import (
    EXPORT_FILES,
    PET_VIEW_FILE,
    ExportError,
    export_and_verify,
    export_pet_view,
    load_exported,
    preferred_export,
)

__all__ = ["EXPORT_FILES", "PET_VIEW_FILE", "ExportError", "export_and_verify", "export_pet_view", "load_exported",
           "preferred_export"]

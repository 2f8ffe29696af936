"""Exported models: TorchScript (traced) and torch.export (.pt2), each verified against eager."""

from petlab.export.exporter import EXPORT_FILES, ExportError, export_and_verify, load_exported, preferred_export

__all__ = ["EXPORT_FILES", "ExportError", "export_and_verify", "load_exported", "preferred_export"]

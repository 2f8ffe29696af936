"""Datasets in their public layouts, robust image decoding, preprocessing and loaders.

Names are imported on first use (PEP 562), so `petlab.data.images` and `.transforms` can be
used -- by the demo server, say -- without loading the dataset readers' dependencies (sklearn).
"""

import importlib

_HOME = {"DATASETS": "datasets", "DatasetError": "datasets", "Splits": "datasets", "load_splits": "datasets",
         "normalise_class_name": "datasets", "BadImageError": "images", "load_rgb": "images",
         "Preprocessing": "transforms"}

__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'petlab.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"petlab.data.{_HOME[name]}"), name)

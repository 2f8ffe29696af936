"""Datasets in their public layouts, robust image decoding, preprocessing and loaders."""

from petlab.data.datasets import DATASETS, DatasetError, Splits, load_splits, normalise_class_name
from petlab.data.images import BadImageError, load_rgb
from petlab.data.transforms import Preprocessing

__all__ = ["DATASETS", "DatasetError", "Splits", "load_splits", "normalise_class_name", "BadImageError",
           "load_rgb", "Preprocessing"]

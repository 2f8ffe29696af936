"""Checkpoints that survive a crash mid-write (written to a temp file, then renamed), and that are
read without running code: a checkpoint is a pickle, and a crafted `best.pt` dropped under runs/
would otherwise run its payload when promote.py (which picks runs by itself), evaluate.py or
--resume opens it. torch's weights-only unpickler accepts tensors and plain data; the only other
things our checkpoints hold are numpy's RNG state arrays, allow-listed below."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from petlab.errors import ConfigError, DatasetError, MissingFileError, UnsafeFileError
from petlab.fileio import atomic_write


def atomic_save(obj, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(NUMPY_RNG_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's message is a page long; the one line that matters
        refused = next((line.split("WeightsUnpickler error:")[-1].strip() for line in str(exc).splitlines()
                        if "GLOBAL" in line or "Unsupported" in line), "the weights-only unpickler refused it")
        raise UnsafeFileError(f"{path} is not a plain petlab checkpoint and was not loaded ({refused}); "
                              "a checkpoint may only hold tensors and plain data") from None
    except (RuntimeError, EOFError, OSError) as exc:  # truncated or not a torch file at all
        raise UnsafeFileError(f"{path} is not a readable checkpoint ({str(exc).split('. ')[0]}); "
                              "retrain, or resume from checkpoints/last.pt") from None


# numpy.random.get_state() is a tuple holding a uint32 array: these rebuild that array and nothing else.
NUMPY_RNG_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


# What a resumed run must share with the part that wrote its checkpoint: everything that shapes the
# model, the labels and the optimisation. Paths, threads and worker counts may change between parts.
NOT_RECIPE = {"output_dir", "data.data_dir", "data.cache_dir", "data.num_workers", "train.threads",
              "tracking", "diagnostics"}


def recipe_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, outside NOT_RECIPE."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if dotted in NOT_RECIPE:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += recipe_differences(a, b, f"{dotted}.")
        elif a != b:
            differences.append(f"{dotted}: {a!r} -> {b!r}")
    return differences


def check_resumable(ckpt: dict, path: Path, classes: list[str], config: dict) -> None:
    """Refuse to continue from a checkpoint whose classes or recipe are not this run's: a renamed class
    folder would silently permute the labels, an edited config.yaml would train another recipe."""
    if list(ckpt.get("classes") or []) != list(classes):
        saved, now = list(ckpt.get("classes") or []), list(classes)
        changed = sorted(set(saved) ^ set(now)) or "the same names in another order"
        raise DatasetError(f"cannot resume from {path}: it was trained on {len(saved)} classes, the dataset now has "
                           f"{len(now)} (differing: {changed}); renamed, added or removed class folders would "
                           "permute the labels. Restore the folders, or start a new run")
    differences = recipe_differences(ckpt.get("config") or {}, config)
    if differences:
        raise ConfigError(f"cannot resume from {path}: config.yaml no longer matches the run's recipe "
                          f"({'; '.join(differences[:5])}); restore it, or start a new run")

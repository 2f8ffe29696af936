"""Checkpoints that survive a crash mid-write: written to a temp file, then renamed."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from petlab.errors import MissingFileError
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
    # Our own checkpoints hold numpy RNG state and plain config data, hence weights_only=False.
    return torch.load(path, map_location="cpu", weights_only=False)

"""A run directory, `runs/<run-id>/`: the one module that knows its files, reads and writes them, and
rebuilds the model a run trained. The engine writes through it; evaluation, promotion, reports and
resuming read through it.

    config.yaml        what the run did (the resolved config; after cross-validation, the refit's values)
    results.json       its outcome (outcome.py fills it; one set of keys for every ending)
    predictions.npz    every val and test photo's file, label and predicted probabilities
    metrics.csv        one row per epoch
    cv.json            the cross-validation table of a few-shot run
    checkpoints/       best.pt (what is evaluated, exported and served) and last.pt (what --resume continues)

Checkpoints are read without running code: a checkpoint is a pickle, and a crafted `best.pt` dropped
under runs/ would otherwise run its payload when promote.py (which picks runs by itself), evaluate.py
or --resume opens it. torch's weights-only unpickler accepts tensors and plain data; the only other
things our checkpoints hold are numpy's RNG state arrays, allow-listed below.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from petlab.config import Config, config_from_dict
from petlab.data.transforms import Preprocessing
from petlab.errors import MissingFileError, UnsafeFileError
from petlab.fileio import atomic_write, write_json
from petlab.models import rebuild_trained
from petlab.records import checked_results

CONFIG, RESULTS, PREDICTIONS, METRICS, CV = "config.yaml", "results.json", "predictions.npz", "metrics.csv", "cv.json"


def checkpoint_path(run_dir: Path, name: str = "best.pt") -> Path:
    return Path(run_dir) / "checkpoints" / name


def read_config(run_dir: Path) -> Config:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise MissingFileError(f"not a run directory (no {CONFIG}): {run_dir}")
    return config_from_dict(yaml.safe_load(path.read_text()))


def write_config(run_dir: Path, cfg: Config, note: str = "") -> Path:
    """config.yaml; `note` becomes a comment at its top, for what the values alone do not say."""
    header = "".join(f"# {line}\n" for line in note.splitlines())
    return atomic_write(Path(run_dir) / CONFIG, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_results(run_dir: Path) -> dict:
    """results.json, checked against its schema (records.py: a RecordError says what is wrong); {} when there
    is none yet, or it cannot be read (a run killed before writing it)."""
    path = Path(run_dir) / RESULTS
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return checked_results(data, path)


def write_results(run_dir: Path, results: dict) -> Path:
    path = Path(run_dir) / RESULTS
    return write_json(path, checked_results(results, path))


def write_predictions(run_dir: Path, classes: list[str], splits: dict[str, tuple[list[str], np.ndarray, np.ndarray]]
                      ) -> Path:
    """predictions.npz from {split: (files, targets, probs)}. Promotion fits the temperature on them and
    pairs them with the production model's on the same photos."""
    arrays = {}
    for split, (files, targets, probs) in splits.items():
        arrays.update({f"{split}_files": np.array(files), f"{split}_targets": targets,
                       f"{split}_probs": probs.astype(np.float32)})
    return atomic_write(Path(run_dir) / PREDICTIONS,
                        lambda f: np.savez_compressed(f, classes=np.array(classes), **arrays))


def read_predictions(run_dir: Path) -> dict | None:
    """predictions.npz as {"classes": [...], split: {"files", "targets", "probs"}}; None for a run without one."""
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        return None
    with np.load(path) as npz:
        splits = {name.rsplit("_", 1)[0] for name in npz.files if name.endswith("_probs")}
        return {"classes": npz["classes"].tolist(),
                **{split: {"files": npz[f"{split}_files"].tolist(), "targets": npz[f"{split}_targets"],
                           "probs": npz[f"{split}_probs"].astype(np.float64)} for split in sorted(splits)}}


# numpy.random.get_state() is a tuple holding a uint32 array: these rebuild that array and nothing else.
NUMPY_RNG_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


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


@dataclass
class TrainedModel:
    model: torch.nn.Module  # eval mode, on the CPU
    cfg: Config  # the config the checkpoint was written with
    classes: list[str]
    preprocessing: Preprocessing


def load_model(run_dir: Path, checkpoint: str = "best.pt") -> TrainedModel:
    """The model a run trained, rebuilt from its checkpoint: architecture, head size and dropout from the
    config saved with it (models.rebuild_trained, which the registry's state-dict fallback uses too)."""
    ckpt = load_checkpoint(checkpoint_path(run_dir, checkpoint))
    cfg = config_from_dict(ckpt["config"])
    model = rebuild_trained(cfg.model.arch, len(ckpt["classes"]), ckpt["model"], cfg.model.dropout)
    return TrainedModel(model, cfg, list(ckpt["classes"]), Preprocessing.from_dict(ckpt["preprocessing"]))

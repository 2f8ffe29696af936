"""Helpers for registry tests: run folders that share real checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def clone_run(run: Path, dest: Path, val: float | None = None, test: float | None = None) -> Path:
    """A run folder that shares the original's checkpoints, with its own record (and, if given, scores)."""
    dest.mkdir(parents=True)
    for name in ("config.yaml", "metrics.csv", "predictions.npz"):
        shutil.copy(run / name, dest / name)
    (dest / "checkpoints").symlink_to(run / "checkpoints")
    results = json.loads((run / "results.json").read_text())
    if val is not None:
        results["val"]["accuracy"], results["test"]["accuracy"] = val, test
    (dest / "results.json").write_text(json.dumps(results))
    return dest

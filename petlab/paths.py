"""Where petlab reads and writes: one rule, one module.

The rule: every location petlab chooses for you hangs off one project root, never off the
current directory. The root is $PETLAB_HOME when set, else the checkout petlab is imported from
(the folder holding `petlab/`, also in a Hugging Face Space). Relative paths in a config
(`output_dir`, `data.cache_dir`) and in the PETLAB_* variables are relative to that root too;
absolute paths are used as given. So `runs/`, `models/registry/`, `data/raw/`,
`data/cache/` and `runs/optuna.db` are one tree whichever folder a script starts in.

Paths you type to name something that already exists (a config file, a run directory to resume or
evaluate, `--storage sqlite:///...`) are ordinary shell paths, relative to where you are.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def project_root() -> Path:
    return Path(os.environ.get("PETLAB_HOME") or REPO_ROOT).resolve()


def under_root(path: str | os.PathLike) -> Path:
    """An absolute path: relative ones are taken from the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def relative_to_root(path: str | os.PathLike) -> Path | None:
    """path relative to the project root when it lies under it, else None."""
    path, root = Path(path), project_root()
    return path.relative_to(root) if path.is_absolute() and path.is_relative_to(root) else None


def _from_env(variable: str, default: str) -> Path:
    return under_root(os.environ.get(variable) or default)


def data_root() -> Path:
    """Datasets, one folder each: $PETLAB_DATA_DIR or data/raw."""
    return _from_env("PETLAB_DATA_DIR", "data/raw")


def cache_root(configured: str | None = None) -> Path:
    """Decoded images and backbone features: data.cache_dir, $PETLAB_CACHE_DIR or data/cache."""
    return under_root(configured) if configured else _from_env("PETLAB_CACHE_DIR", "data/cache")


def registry_root() -> Path:
    """The model registry: $PETLAB_REGISTRY_DIR or models/registry."""
    return _from_env("PETLAB_REGISTRY_DIR", "models/registry")


def runs_root(output_dir: str = "runs") -> Path:
    """Run directories: the config's output_dir (default runs/)."""
    return under_root(output_dir)


def default_study_storage() -> str:
    """The Optuna storage sweeps, the dashboard and reports share when no --storage is given."""
    return f"sqlite:///{runs_root() / 'optuna.db'}"

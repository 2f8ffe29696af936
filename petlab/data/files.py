"""Which entries of a folder are data: one rule for every reader, so hidden clutter never becomes a class."""

from __future__ import annotations

from pathlib import Path


def is_hidden(name: str) -> bool:
    """Entries no user means as data: dot-files and dot-folders (.DS_Store, .ipynb_checkpoints, ._x.jpg),
    and the __MACOSX folder that macOS zips carry."""
    return name.startswith(".") or name == "__MACOSX"


def visible_files(folder: Path) -> list[Path]:
    """Every file under folder, recursively, except hidden entries and anything inside a hidden folder."""
    folder = Path(folder)
    return sorted(f for f in folder.rglob("*")
                  if f.is_file() and not any(is_hidden(part) for part in f.relative_to(folder).parts))


def visible_dirs(folder: Path) -> list[Path]:
    """The folder's sub-folders that are not hidden (class folders, split folders)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_dir() and not is_hidden(p.name))

"""An import path that holds only what a requirements file names, for running a bundle as its host would.

A Hugging Face Space installs demo/requirements.txt and nothing else; the development venv has far
more (comet_ml, optuna, pytest, ...). Installing the bundle's requirements into a fresh venv needs the
network, so instead this links, from the venv that is already here, exactly the distributions the
file names and those they require (markers evaluated for this Python, no extras), and nothing else.
Run the bundle with `python -S` and PYTHONPATH set to that folder: no site-packages, so an import the
requirements do not cover fails as it would on the Space. (A top-level folder that several
distributions share, such as nvidia/, comes whole: torch needs all of it anyway.)
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def required_distributions(requirements: Path) -> set[str]:
    """The distributions `requirements` names, and recursively what each requires."""
    todo = [Requirement(line).name for line in requirements.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    seen: set[str] = set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for spec in metadata.distribution(name).requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def isolated_site(requirements: Path, folder: Path) -> Path:
    """A folder of links to the top-level modules of exactly those distributions; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(required_distributions(requirements)):
        dist = metadata.distribution(name)
        site = Path(dist.locate_file(""))
        for top in {file.parts[0] for file in dist.files or [] if file.parts[0] != ".."}:
            if top.endswith(".pth") or top == "__pycache__" or (folder / top).exists():
                continue
            if (site / top).exists():
                os.symlink(site / top, folder / top)
    return folder

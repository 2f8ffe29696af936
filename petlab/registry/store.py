"""The local model registry: per task a model name and numbered versions, each with a status.

Layout (root: $PETLAB_REGISTRY_DIR or models/registry):
    <task>/index.json      the versions and their statuses: the single source of truth
    <task>/v<N>/           model.onnx, model.pt2, model.ts, state_dict.pt, card.json, ... (models/README.md)
    .lock                  held (flock) by every writer, so concurrent promotions serialise

Crash safety: a new version is written in full to a `.staging-*` folder first and renamed into
place under the lock; index.json and the cards are replaced atomically (temp file + rename).
A crash leaves at worst an orphaned staging folder or an unindexed v<N>, both of which readers
ignore and the next version number skips. Readers never take the lock.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from petlab.errors import PromotionError, RegistryError
from petlab.fileio import atomic_write, file_lock, pid_alive
from petlab.names import model_name
from petlab.paths import registry_root
from petlab.records import checked_card

# The statuses Comet's model registry uses, lower-cased.
STATUSES = ("none", "staging", "production", "archived")
UNGATED = object()  # add_version without a gate to re-check (tests, tools)


def _named(version: int | None) -> str:
    return "no production version" if version is None else f"v{version}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Registry:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else registry_root()

    # ---- reading (no lock: every file a reader opens was written atomically) ----
    def tasks(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/index.json"))

    def index(self, task: str) -> dict:
        path = self.root / task / "index.json"
        if not path.is_file():
            return {"task": task, "name": model_name(task), "versions": []}
        return json.loads(path.read_text())

    def versions(self, task: str) -> list[dict]:
        return self.index(task)["versions"]

    def version_dir(self, task: str, version: int) -> Path:
        return self.root / task / f"v{version}"

    def entry(self, task: str, version: int) -> dict:
        for entry in self.versions(task):
            if entry["version"] == version:
                return entry
        known = [e["version"] for e in self.versions(task)]
        raise RegistryError(f"{task} has no version {version} in {self.root} (versions: {known or 'none'})")

    def card(self, task: str, version: int) -> dict:
        card = read_card(self.version_dir(task, version))
        card["status"] = self.entry(task, version)["status"]  # the index is the truth
        return card

    def production(self, task: str) -> dict | None:
        """The index entry of the task's production version, or None."""
        return next((e for e in self.versions(task) if e["status"] == "production"), None)

    # ---- writing (always under the registry lock) ----
    def _locked(self):
        return file_lock(self.root / ".lock")

    def staging_dir(self, task: str) -> Path:
        """A private folder to write a new version into before add_version() moves it in."""
        path = self.root / task / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def add_version(self, task: str, staged: Path, card: dict, status: str = "production",
                    gated_against: int | None | object = UNGATED, forced: bool = False) -> int:
        """Move a fully written staging folder in as the next version; returns its number.

        gated_against: the production version (or None: there was none) the promotion gate compared
        the candidate with, minutes ago and outside the lock. Checked again here, under it: a rollback
        in between would otherwise be undone silently, and another promotion would have been skipped by
        the gate (the card's `compared_with` would name a version no longer production). Only a forced
        promotion (--force: the comparison does not matter) may land on top of a newer promotion; none
        undoes a rollback."""
        _check_status(status)
        with self._locked():
            self._reap_staging(task)
            index = self.index(task)
            if gated_against is not UNGATED:
                now = next((e["version"] for e in index["versions"] if e["status"] == "production"), None)
                newer = now is not None and (gated_against is None or now > gated_against)
                if now != gated_against and not (forced and newer):
                    raise PromotionError(
                        f"production {task} changed from {_named(gated_against)} to {_named(now)} while this "
                        "promotion was exporting; nothing was added. Run promote.py again to compare with "
                        f"{_named(now)}")
            taken = [e["version"] for e in index["versions"]]
            taken += [int(p.name[1:]) for p in (self.root / task).glob("v*") if p.name[1:].isdigit()]
            version = max(taken, default=0) + 1
            card = {**card, "name": index["name"], "task": task, "version": version, "status": "none"}
            write_card(staged, card)
            os.replace(staged, self.version_dir(task, version))
            index["versions"].append({"version": version, "status": "none", "created_at": card["created_at"],
                                      "arch": card["arch"], "source_run": card["source_run"],
                                      "selected_by": card["selected_by"]})
            self._commit(task, index)
            if status != "none":
                self._set_status(task, version, status)
        return version

    def _reap_staging(self, task: str) -> None:
        """Remove staging folders of promotions that died (their pid is gone); live ones are left alone."""
        for folder in (self.root / task).glob(".staging-*"):
            pid = folder.name.split("-")[1]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)

    def set_status(self, task: str, version: int, status: str) -> None:
        """Making a version production archives the previous production version (one at a time)."""
        _check_status(status)
        with self._locked():
            self._set_status(task, version, status)

    def _set_status(self, task: str, version: int, status: str) -> None:
        index = self.index(task)
        changed = []
        for entry in index["versions"]:
            if entry["version"] == version:
                entry.update(status=status, status_changed_at=now_iso())
                changed.append(entry)
            elif status == "production" and entry["status"] == "production":
                entry.update(status="archived", status_changed_at=now_iso())
                changed.append(entry)
        if not any(e["version"] == version for e in changed):
            self.entry(task, version)  # raises with the known versions
        self._commit(task, index)
        for entry in changed:  # cards mirror the index (rewritten after it, so a crash leaves the truth)
            folder = self.version_dir(task, entry["version"])
            card = read_card(folder)
            write_card(folder, {**card, "status": entry["status"]})

    def annotate(self, task: str, version: int, **fields) -> None:
        """Add fields to a version's card (e.g. its Comet registration, known only after it is added)."""
        with self._locked():
            folder = self.version_dir(task, version)
            card = read_card(folder)
            write_card(folder, {**card, **fields, "status": self.entry(task, version)["status"]})

    def _commit(self, task: str, index: dict) -> None:
        (self.root / task).mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / task / "index.json", json.dumps(index, indent=2) + "\n")

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise RegistryError(f"unknown status {status!r}; one of {STATUSES}")


def read_card(folder: Path) -> dict:
    """A version's card.json, checked against its schema (records.py)."""
    path = Path(folder) / "card.json"
    return checked_card(json.loads(path.read_text()), path)


def write_card(folder: Path, card: dict) -> None:
    """card.json (checked against its schema first), and the same as card.md and as Hugging Face's README.md."""
    from petlab.registry.card import HF_CARD, card_markdown, hugging_face_card

    card = checked_card(card, Path(folder) / "card.json")
    atomic_write(folder / "card.json", json.dumps(card, indent=2) + "\n")
    atomic_write(folder / "card.md", card_markdown(card))
    atomic_write(folder / HF_CARD, hugging_face_card(card))

"""The two records petlab writes and reads back: a run's results.json and a registry version's card.json.

One typed definition each (pydantic, which Gradio already installs), with a schema version. Every file is
checked when it is written (rundir.write_results, registry.store.write_card) and when it is read
(rundir.read_results, reports.runs, registry.store): a field missing or of the wrong type is a RecordError
naming the file and the field, not a KeyError three modules later. A file from before schema versions (no
`schema_version`) holds the same fields and is read as version 1; a file from a newer petlab is refused,
saying so. The definitions name the fields every reader relies on; a record may carry more (a hook's part of
results.json, a promotion's figures), kept as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from petlab.errors import PetlabError

RESULTS_SCHEMA = 1
CARD_SCHEMA = 1


class RecordError(PetlabError):
    """A results.json or card.json that does not hold what its schema says."""


class SplitMetrics(BaseModel):
    """A split's metrics of the kept checkpoint (results.json's val and test, a card's metrics)."""
    model_config = ConfigDict(extra="allow")
    accuracy: float
    loss: float | None = None
    n: int | None = None


class Results(BaseModel):
    """A run's results.json: the same keys whatever its ending (engine/outcome.py write_results)."""
    model_config = ConfigDict(extra="allow")
    schema_version: int = RESULTS_SCHEMA
    status: str  # completed, interrupted, or a StopRun's status (pruned)
    reason: str | None = None
    epochs_completed: int
    best_epoch: int | None = None
    stopped_by: str | None = None
    val: SplitMetrics | None = None
    test: SplitMetrics | None = None
    wall_time_s: float
    tracking: dict[str, Any] | None = None


class Card(BaseModel):
    """A registry version's card.json (registry/promote.py writes it, registry/store.py keeps its status)."""
    model_config = ConfigDict(extra="allow")
    schema_version: int = CARD_SCHEMA
    name: str
    task: str
    version: int
    status: str
    arch: str
    created_at: str
    source_run: str
    selected_by: dict[str, Any]
    classes: list[str]
    preprocessing: dict[str, Any]
    files: dict[str, Any]
    metrics: dict[str, SplitMetrics | None]
    answers: dict[str, Any] | None = None


def _checked(model: type[BaseModel], current: int, data: Any, where: str | Path) -> dict:
    if not isinstance(data, dict):
        raise RecordError(f"{where}: not a {model.__name__.lower()} record (a JSON object expected)")
    version = data.get("schema_version", current)  # before versions: the same fields as version 1
    if not isinstance(version, int) or version > current:
        raise RecordError(f"{where}: schema_version {version!r} is newer than this petlab reads ({current}); "
                          "update petlab")
    try:
        record = model.model_validate({**data, "schema_version": current})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise RecordError(f"{where}: not a valid {model.__name__.lower()} record ({problems})") from None
    return {**data, "schema_version": record.schema_version}


def checked_results(data: Any, where: str | Path = "results.json") -> dict:
    """results.json's content, checked against Results (and stamped with its schema version)."""
    return _checked(Results, RESULTS_SCHEMA, data, where)


def checked_card(data: Any, where: str | Path = "card.json") -> dict:
    """card.json's content, checked against Card (and stamped with its schema version)."""
    return _checked(Card, CARD_SCHEMA, data, where)

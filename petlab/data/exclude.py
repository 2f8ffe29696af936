"""An audit's findings as training input: which photos a run leaves out (data.exclude, data.exclude_kinds)."""

from __future__ import annotations

import csv
from pathlib import Path

from petlab.errors import ConfigError


def read_findings_csv(path: str | Path, kinds: list[str] | None = None) -> list[dict]:
    """The rows of an audit's findings.csv, only the given kinds when named (the config checks their names)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ConfigError(f"data.exclude: cannot read the audit's findings {path}: {exc.strerror}") from None
    if rows and not {"kind", "file"} <= set(rows[0]):
        raise ConfigError(f"data.exclude: {path} is not an audit's findings.csv (it needs kind and file columns)")
    return [r for r in rows if not kinds or r["kind"] in kinds]


def excluded_files(path: str | Path, kinds: list[str] | None, data_root: str | Path) -> dict[str, str]:
    """{resolved file: kind} of the findings to leave out; a finding's file is relative to the data folder (as
    the audit writes it, so a report travels between machines), or absolute (an older report)."""
    return {str((Path(data_root) / r["file"]).resolve()): r["kind"] for r in read_findings_csv(path, kinds)}

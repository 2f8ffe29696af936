"""Names the engine, the registry and Comet must agree on, in a module both can import."""

from __future__ import annotations

SPECIES = ("cat", "dog")  # the cats_vs_dogs task's class names, whatever a dataset calls them


def model_name(task: str) -> str:
    """The registered model's name, the same locally and in Comet."""
    return f"petlab-{task.replace('_', '-')}"

# What an audit (petlab/audit.py) finds, one kind per row of its findings.csv; data.exclude_kinds chooses among them.
AUDIT_KINDS = ("leak", "conflict", "duplicate", "label_error", "not_a_pet", "unreadable", "tiny", "extreme_aspect",
               "grayscale")

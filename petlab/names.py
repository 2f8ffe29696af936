"""Names the engine, the registry and Comet must agree on, in a module both can import."""

from __future__ import annotations

SPECIES = ("cat", "dog")  # the cats_vs_dogs task's class names, whatever a dataset calls them


def model_name(task: str) -> str:
    """The registered model's name, the same locally and in Comet."""
    return f"petlab-{task.replace('_', '-')}"

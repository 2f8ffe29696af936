"""Progress bars (tqdm), drawn by one process only: rank 0 when torchrun starts several."""

from __future__ import annotations

from contextlib import contextmanager

from tqdm import tqdm

_shown = True


def hide_progress() -> None:
    """For the other ranks of a multi-process run (tqdm reads TQDM_DISABLE only at import)."""
    global _shown
    _shown = False


def progress(*args, **kwargs) -> tqdm:
    if not _shown:
        kwargs["disable"] = True
    return tqdm(*args, **kwargs)


@contextmanager
def inner_progress_hidden():
    """Bars created inside are not drawn (many short inner loops under one outer bar)."""
    global _shown
    before, _shown = _shown, False
    try:
        yield
    finally:
        _shown = before

"""Files that are either whole or absent, and a lock for writers that share a folder.

atomic_write: write to a temporary file beside the target, flush it to disk, then rename it over
the target (rename is atomic on POSIX), so a reader or a crash never sees half a file.
file_lock: filelock's FileLock (already a dependency through torch and huggingface), which works
across processes on one host.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from filelock import FileLock


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary path beside `path`: fill it in the block; it is renamed over `path` when the
    block ends without error and deleted otherwise (for writers that need a path, such as a memmap)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide outputs from other users (a demo service)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write text, bytes, or whatever writer(binary_file) writes (torch.save, np.save), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        if callable(data):
            data(fh)
        else:
            fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def write_json(path: str | os.PathLike, data: dict) -> Path:
    return atomic_write(path, json.dumps(data, indent=2))


def file_lock(path: str | os.PathLike, timeout: float = -1) -> FileLock:
    """An exclusive inter-process lock on `path` (created if missing); use as a context manager."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=timeout)

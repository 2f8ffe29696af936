"""Files that are either whole or absent, and a lock for writers that share a folder.

atomic_write: write to a temporary file beside the target, flush it to disk, then rename it over
the target (rename is atomic on POSIX), so a reader or a crash never sees half a file.
A writer killed mid-write (kill -9, a full disk) leaves its temporary file behind; its name carries
the writer's pid, so the next write of the same target removes it once that process is gone.
file_lock: filelock's FileLock (already a dependency through torch and huggingface), which works
across processes on one host.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
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
    remove_orphaned_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise disk_full(exc, path) from None
        raise
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide outputs from other users (a demo service)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise disk_full(exc, path) from None
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: OSError, path: Path) -> OSError:
    """The error for a write that found no room (nothing of it is left behind): the same errno, naming the
    file and the room left, which the scripts print as one `error:` line (petlab.errors.report_error)."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MB free there"
    except OSError:
        free = "free space unknown"
    return OSError(exc.errno, f"{exc.strerror}; {free}", str(path))


def remove_orphaned_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files of earlier writes of `path` whose writer process no longer exists."""
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (someone else's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


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


# What a spreadsheet may read as the start of a formula (OWASP's CSV injection list: = + - @, tab and CR), with
# the full-width forms some spreadsheets fold onto them, and | (DDE in older ones); leading spaces are skipped
# by some readers, so they are looked through.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "|", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def spreadsheet_safe(value):
    """A CSV cell that no spreadsheet runs: a string that starts like a formula (after any spaces) gets a leading
    quote, as OWASP advises; numbers and the rest are as given. `spreadsheet_value` takes the quote off again."""
    if isinstance(value, str) and (value.lstrip(" ").startswith(FORMULA_STARTS) or value.startswith("'")):
        return "'" + value
    return value


def spreadsheet_value(cell: str | None) -> str | None:
    """A cell written by spreadsheet_safe, as it was meant."""
    return cell[1:] if cell and cell.startswith("'") else cell


def write_csv(target: str | os.PathLike | IO[str], rows: list[dict], fields: list[str] | None = None,
              **writer_options) -> None:
    """The CSV every petlab report writes: a header, then `rows`, every cell through spreadsheet_safe. `target`: a
    path (written whole, atomically) or an open text file."""
    import csv
    import io

    fields = fields or list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO(newline="") if isinstance(target, (str, os.PathLike)) else target
    writer = csv.DictWriter(text, fieldnames=fields, **writer_options)
    writer.writeheader()
    writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
    if isinstance(target, (str, os.PathLike)):
        atomic_write(target, text.getvalue())

"""Every error petlab expects a user to meet, at the bottom of the package (it imports nothing of petlab).

The scripts in experiments/ catch `PetlabError` alone and print its message as one `error:` line
(exit code 2): the message names the file, key or URL and what to do. Anything else is a bug and
keeps its traceback. Each class also derives from the builtin it used to be, so `except ValueError`
in older callers still works.
"""

from __future__ import annotations


class PetlabError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class ConfigError(PetlabError, ValueError):
    """A config value or key is wrong; the message names the key and what is allowed."""


class DatasetError(PetlabError, ValueError):
    """The dataset is missing, laid out wrongly, or does not fit the task; the message names the path."""


class DownloadError(PetlabError, RuntimeError):
    """A dataset archive could not be fetched or unpacked."""


class WeightsError(PetlabError, RuntimeError):
    """Pretrained weights are missing or do not fit the architecture."""


class MissingFileError(PetlabError, FileNotFoundError):
    """A run directory, checkpoint or report input that should exist does not."""


class UnsafeFileError(PetlabError, ValueError):
    """A stored file (a checkpoint) holds something other than plain data, or is unreadable: refused
    unopened, so no code in it runs."""


class RegistryError(PetlabError, RuntimeError):
    """The model registry has no such task/version, or refuses the change."""


class PromotionError(PetlabError, RuntimeError):
    """A run cannot be promoted (no completed run, a failed export check, ...)."""


class PromotionRefused(PromotionError):
    """The candidate is not significantly better than production; the message gives the numbers.
    The scripts exit 3 for it (not 2): a refusal is an answer, not a broken input."""


class ExportError(PetlabError, RuntimeError):
    """An exported model does not reproduce the eager model's outputs."""


class DiskFullError(PetlabError, OSError):
    """A write found no room (the disk or the user's quota is full); the message names the file, the room
    left and where else to write (report_error makes one of any OSError with ENOSPC or EDQUOT)."""


def report_error(exc: BaseException) -> int:
    """What a script does with an error a user may meet: one `error:` line on standard error, exit code 2.
    A full disk is one of those wherever the write happened (an OSError with ENOSPC or EDQUOT); any other
    OSError is re-raised with its traceback."""
    import errno
    import sys

    if isinstance(exc, OSError) and not isinstance(exc, PetlabError):
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise exc
        exc = DiskFullError(f"no room to write {exc.filename or 'a file'} ({exc.strerror}): free some space, or "
                            "write elsewhere (--output-dir, PETLAB_CACHE_DIR, --registry)")
    print(f"error: {exc}", file=sys.stderr)
    return 2

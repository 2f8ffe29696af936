"""Progress, drawn by one process only (rank 0 when torchrun starts several): tqdm's bars on a terminal, and in
a redirected log (a file, CI, a pipe) a plain line now and then instead, since a bar's carriage returns fill a
log with tens of kilobytes of redrawn lines (a 10-epoch run once wrote 72 KB beside its 24-line train.log)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from tqdm import tqdm

_shown = True
QUIET_S = 10.0  # in a log, work shorter than this says nothing; longer work a line each tenth of the way,
MIN_GAP_S = 5.0  # at most one every this many seconds (and the last)


def hide_progress() -> None:
    """For the other ranks of a multi-process run (tqdm reads TQDM_DISABLE only at import)."""
    global _shown
    _shown = False


class LineProgress:
    """tqdm's interface as petlab uses it (iterate, update, set_postfix, set_description, close, with), for a
    log: once QUIET_S have passed, a line at each further tenth of `total`, at most one every MIN_GAP_S, and the
    last (every 60 s where there is no total)."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", **_):
        self.iterable, self.desc, self.unit, self.n, self.postfix = iterable, desc or "progress", unit, 0, ""
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.start = self.last = time.monotonic()
        self.tenths_said = 0

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.start < QUIET_S:
            return
        if self.total:
            tenths = min(10, int(10 * self.n / self.total))
            if tenths > self.tenths_said and (now - self.last >= MIN_GAP_S or tenths == 10):
                self.tenths_said = tenths
                self.say(now)
        elif now - self.last >= 60:
            self.say(now)

    def say(self, now: float) -> None:
        self.last = now
        done = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total else \
            f"{self.n} {self.unit}"
        postfix = f" ({self.postfix})" if self.postfix else ""
        print(f"{time.strftime('%H:%M:%S')} {self.desc}: {done}, {now - self.start:.0f} s{postfix}", file=sys.stderr,
              flush=True)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        pass


def progress(*args, **kwargs):
    if not _shown:
        kwargs["disable"] = True
        return tqdm(*args, **kwargs)
    if not sys.stderr.isatty():
        return LineProgress(*args, **kwargs)
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

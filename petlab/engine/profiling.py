"""Per-epoch profile (data wait vs compute, CPU use, peak memory) and an optional torch.profiler trace."""

from __future__ import annotations

import logging
import os
import resource
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from petlab.engine.hooks import BatchAt, Hook

log = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (or of its largest loader worker), in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # Linux reports KiB


class EpochProfile:
    """Split one training epoch into time spent waiting for the next batch and everything else."""

    def __init__(self):
        self.data_seconds = 0.0
        self._start = time.perf_counter()
        self._cpu = sum(os.times()[:2])
        self._waiting_since = None
        self._excluded = 0.0

    def wait_started(self) -> None:
        self._waiting_since = time.perf_counter()

    def wait_ended(self) -> None:
        self.data_seconds += time.perf_counter() - self._waiting_since

    def batches(self, loader):
        """Iterate a loader, timing each wait for a batch."""
        iterator = iter(loader)
        while True:
            self.wait_started()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.wait_ended()
            yield batch

    def elapsed(self) -> float:
        return time.perf_counter() - self._start - self._excluded

    def exclude(self, seconds: float) -> None:
        """Leave this time out of the epoch's training time (a step that compiled)."""
        self._excluded += seconds

    def finish(self, images: int) -> dict:
        wall = max(self.elapsed(), 1e-9)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return {
            "train_seconds": wall,
            "data_seconds": self.data_seconds,
            "compute_seconds": wall - self.data_seconds,
            "data_wait_fraction": self.data_seconds / wall,
            "images_per_second": images / wall,
            "cpu_utilisation": (sum(os.times()[:2]) - self._cpu) / wall / cores,
            "peak_rss_mb": peak_rss_mb(),
        }


@contextmanager
def torch_trace(out_dir: Path, steps: int, enabled: bool):
    """Yields a `step()` callable; with `enabled`, records `steps` steps after one warm-up step."""
    if not enabled:
        yield lambda: None
        return
    from torch.profiler import ProfilerActivity, profile, schedule

    out_dir.mkdir(parents=True, exist_ok=True)

    def save(prof):
        prof.export_chrome_trace(str(out_dir / "trace.json"))
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        (out_dir / "top_ops.txt").write_text(table + "\n")
        log.info("profiler: trace of %d steps in %s (open in chrome://tracing or ui.perfetto.dev)", steps, out_dir)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
                 on_trace_ready=save, record_shapes=True, profile_memory=True) as prof:
        yield prof.step


class CompileTimer(Hook):
    """--compile: the step that compiles is timed into results.json's compile_seconds and left out of the
    epoch's training time (so images_per_second is the compiled model's)."""

    def __init__(self):
        self.compiling, self.started = False, None
        self.seconds = 0.0  # every compiling step's time, across resumes

    def state_dict(self) -> dict:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.seconds = state["seconds"]

    def results(self, trainer) -> dict:
        return {"compile_seconds": self.seconds}

    def on_train_epoch_start(self, trainer, epoch: int) -> None:
        self.compiling = trainer.trainable.compiles_next_step()

    def on_batch_start(self, trainer, at: BatchAt) -> None:
        self.started = time.perf_counter() if self.compiling and at.step == 0 else None

    def on_batch_end(self, trainer, at: BatchAt) -> None:
        if self.started is None:  # compilation happens in the first forward and backward
            return
        at.loss.item()  # wait for the step, to time it
        seconds, self.started = time.perf_counter() - self.started, None
        self.seconds += seconds
        at.profile.exclude(seconds)


class TorchTrace(Hook):
    """--profile: a torch.profiler trace of the fit's first `steps` training steps (one per process)."""

    def __init__(self, out_dir: Path, steps: int):
        self.out_dir, self.steps = out_dir, steps
        self.trace: ExitStack | None = None
        self.step = None
        self.done = False

    def on_train_epoch_start(self, trainer, epoch: int) -> None:
        if not self.done:
            self.trace = ExitStack()
            self.step = self.trace.enter_context(torch_trace(self.out_dir, self.steps, True))

    def on_batch_end(self, trainer, at: BatchAt) -> None:
        if self.step is not None:
            self.step()

    def on_train_epoch_end(self, trainer, epoch: int) -> None:
        if self.trace is not None:
            self.trace.close()
            self.trace, self.step, self.done = None, None, True

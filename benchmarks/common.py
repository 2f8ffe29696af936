"""What the benchmark scripts share: where the shared real photos are, and how one call is timed."""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the benchmarks run as scripts; the demo launcher lives with the tests
    sys.path.insert(0, str(REPO))
from tests.servers import demo_process, demo_server, recording_http_server  # noqa: E402, F401 - needs the path above

__all__ = ["REPO", "benchmark_report_dir", "demo_process", "demo_server", "median_call_seconds", "shared_data"]


def benchmark_report_dir(committed: str) -> Path:
    """Where a benchmark writes its figures by default: runs/benchmarks/<name>/, git-ignored. The committed
    evidence (`committed`, e.g. reports/heatmaps) is rewritten only when asked for by name (reports/README.md
    gives each regeneration command), so running a documented benchmark never changes a committed file."""
    from petlab.paths import runs_root

    return runs_root() / "benchmarks" / Path(committed).name


def shared_data() -> Path:
    """$PETLAB_DATA_DIR, or the shared photos beside the repository (../shared/data)."""
    return Path(os.environ.get("PETLAB_DATA_DIR") or REPO.parent / "shared" / "data")


def median_call_seconds(fn, batch, repeats: int, warmup: int = 2) -> float:
    """Median seconds per call of fn(batch) under inference mode, after `warmup` untimed calls."""
    import torch

    from petlab.engine.latency import call_seconds

    with torch.inference_mode():
        return statistics.median(call_seconds(lambda: fn(batch), repeats, warmup))

"""What the benchmark scripts share: where the shared real photos are, and how one call is timed."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """$PETLAB_DATA_DIR, or the shared photos beside the repository (../shared/data)."""
    return Path(os.environ.get("PETLAB_DATA_DIR") or REPO.parent / "shared" / "data")


def median_call_seconds(fn, batch, repeats: int, warmup: int = 2) -> float:
    """Median seconds per call of fn(batch) under inference mode, after `warmup` untimed calls."""
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            fn(batch)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times)

"""Decode every image once: a memory-mapped uint8 array of resized squares, per split.

JPEG decoding is the one per-image cost that does not change between epochs, so it is paid
once and kept on disk, keyed by the files (path, size, mtime) and the square's size. The
same pass finds the files that are not usable images, so they are counted, logged and
reported instead of crashing a batch later. Random crops and flips still happen per epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petlab.data.images import BadImageError, load_rgb
from petlab.data.transforms import Preprocessing
from petlab.errors import DatasetError
from petlab.fileio import atomic_path, atomic_write
from petlab.progress import progress

log = logging.getLogger(__name__)
# bump when what is stored changes, so old caches are not reused (2: squares resized by Pillow, as served)
CACHE_FORMAT = 2


@dataclass
class DecodedImages:
    array: np.ndarray  # (N_good, S, S, 3) uint8, memory-mapped
    labels: np.ndarray  # (N_good,) int64
    skipped: list[dict]  # {"path", "reason", "detail"} for each file that could not be used
    key: str = ""  # identifies the files and the square size (what derived caches key on)

    def skipped_summary(self) -> dict:
        return {
            "count": len(self.skipped),
            "by_reason": dict(Counter(s["reason"] for s in self.skipped)),
            "files": self.skipped,
        }


def _key(samples: list[tuple[str, int]], size: int) -> str:
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{size}".encode())
    for path, label in samples:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{path}\0{label}\0{stamp}\n".encode())
    return digest.hexdigest()[:24]


def _decode(path: str, pre: Preprocessing) -> np.ndarray | dict:
    try:
        return pre.square(load_rgb(path)).permute(1, 2, 0).numpy()
    except FileNotFoundError as exc:
        return {"path": path, "reason": "missing", "detail": str(exc)}
    except BadImageError as exc:
        return {"path": path, "reason": exc.reason, "detail": str(exc)}


def reserve_disk(path: Path, nbytes: int, split: str) -> None:
    """Allocate the cache file's blocks before it is mapped: a write through a memmap into a full disk is
    a SIGBUS that kills the process without a word, so the space is claimed (or refused) here instead."""
    if not hasattr(os, "posix_fallocate"):  # macOS: no preallocation; a full disk fails the write later
        return
    try:
        with open(path, "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, nbytes)
    except OSError as exc:
        free = shutil.disk_usage(path.parent).free
        raise DatasetError(f"no room for the decode cache of {split}: it needs {nbytes / 2**30:.2f} GiB in "
                           f"{path.parent}, which has {free / 2**30:.2f} GiB free ({exc.strerror}); free some "
                           "space, or set PETLAB_CACHE_DIR (data.cache_dir) to a disk with room") from None


def decode_split(samples: list[tuple[str, int]], pre: Preprocessing, cache_dir: Path, split: str,
                 threads: int = 2) -> DecodedImages:
    size = pre.resize_size
    key = _key(samples, size)
    data_file, meta_file = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    if meta_file.is_file() and data_file.is_file():
        meta = json.loads(meta_file.read_text())
        array = np.memmap(data_file, np.uint8, "r", shape=(len(meta["labels"]), size, size, 3))
        return DecodedImages(array, np.asarray(meta["labels"], np.int64), meta["skipped"], key)

    cache_dir.mkdir(parents=True, exist_ok=True)
    labels, skipped = [], []
    with atomic_path(data_file) as staging:
        reserve_disk(staging, max(len(samples), 1) * size * size * 3, split)
        out = np.memmap(staging, np.uint8, "w+", shape=(max(len(samples), 1), size, size, 3))
        with ThreadPoolExecutor(threads) as pool:  # PIL decodes and resizes without holding the GIL
            results = pool.map(lambda s: _decode(s[0], pre), samples)
            for (path, label), result in progress(zip(samples, results), total=len(samples),
                                              desc=f"decoding {split}", unit="img", leave=False):
                if isinstance(result, dict):
                    skipped.append(result)
                    log.warning("skipping %s (%s): %s", path, result["reason"], result["detail"])
                    continue
                out[len(labels)] = result
                labels.append(label)
        out.flush()
        del out
        if not labels:
            raise DatasetError(f"{split}: none of its {len(samples)} files is a usable image")
        os.truncate(staging, len(labels) * size * size * 3)  # shrink to the good images
    # Data before metadata: metadata present means the data file is complete; without its metadata the data
    # file is an orphan nobody will read, so it goes too.
    try:
        atomic_write(meta_file, json.dumps({"labels": labels, "skipped": skipped, "size": size}))
    except BaseException:
        data_file.unlink(missing_ok=True)
        raise
    if skipped:
        log.warning("%s: skipped %d of %d files (%s)", split, len(skipped), len(samples),
                    dict(Counter(s["reason"] for s in skipped)))
    array = np.memmap(data_file, np.uint8, "r", shape=(len(labels), size, size, 3))
    return DecodedImages(array, np.asarray(labels, np.int64), skipped, key)

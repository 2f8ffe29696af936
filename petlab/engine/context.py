"""A run's context: everything one experiment needs, resolved once at the start and read-only after.

`open_run` turns a config (or a run directory to resume) into a RunContext:
  1. the device, and this process's place in a torchrun job;
  2. the run directory (new, or the one being resumed) and its train.log;
  3. the splits (which also names the dataset), the preprocessing (which fixes the image size),
     and the decoded images;
  4. the config resolved -- dataset name, image size, precision, memory format -- then frozen and
     written to config.yaml, so what the run did is what config.yaml says;
  5. the tracker (rank 0's; the others get the no-op base Tracker).
It closes the tracker, the log file and the process group when the block ends, however it ends.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from sklearn.model_selection import train_test_split
from tqdm.contrib.logging import logging_redirect_tqdm

from petlab import rundir
from petlab.config import Config
from petlab.data.cache import DecodedImages, decode_split
from petlab.data.datasets import Splits, load_splits
from petlab.data.exclude import excluded_files
from petlab.data.transforms import Preprocessing
from petlab.engine import distributed
from petlab.engine.batches import resolve_device
from petlab.engine.features import uses_feature_cache
from petlab.engine.speed import check_precision, speed_settings
from petlab.errors import DatasetError
from petlab.fileio import DISK_FULL
from petlab.models import ARCHS
from petlab.paths import cache_root, runs_root
from petlab.tracking import Tracker, create_tracker

log = logging.getLogger("petlab")


@dataclass(frozen=True)
class RunContext:
    cfg: Config  # resolved and read-only
    run_dir: Path
    resuming: bool
    device: torch.device
    dist: distributed.Distributed
    splits: Splits
    pre: Preprocessing
    decoded: dict[str, DecodedImages]  # "train", "val", "test": whichever the dataset has
    tracker: Tracker
    started: float  # time.perf_counter() when this process started its part of the run
    started_at: str  # when the run first started (kept across resumes)
    previous: dict  # what an interrupted earlier part of the run recorded in results.json

    @property
    def features(self) -> bool:
        """Frozen backbone without augmentation: only the head trains, on cached backbone features."""
        return uses_feature_cache(self.cfg)

    @property
    def cache_dir(self) -> Path:
        return cache_root(self.cfg.data.cache_dir)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main


class RunLogHandler(logging.FileHandler):
    """train.log. On a full disk the console still says everything and the run ends with one `error:` line
    (errors.report_error) instead of a logging traceback for every line that could not be written."""

    def handleError(self, record) -> None:  # noqa: N802 - logging's name
        exc = sys.exc_info()[1]
        if not (isinstance(exc, OSError) and exc.errno in DISK_FULL):
            super().handleError(record)

    def close(self) -> None:
        try:
            super().close()
        except OSError as exc:  # the last lines could not be flushed
            if exc.errno not in DISK_FULL:
                raise


def setup_logging(run_dir: Path | None = None) -> logging.Handler | None:
    """Console logging, plus the run's train.log; returns that file's handler so it can be removed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # Where the root logger was set up already (a notebook, pytest), basicConfig does nothing and the root's
    # WARNING level would keep petlab's progress out of train.log: petlab's own loggers say INFO then.
    if logging.getLogger("petlab").level == logging.NOTSET:
        logging.getLogger("petlab").setLevel(logging.INFO)
    if run_dir is None:
        return None
    handler = RunLogHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def new_run_dir(cfg: Config) -> Path:
    base = runs_root(cfg.output_dir) / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.model.arch}-{cfg.task}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    run_dir.mkdir(parents=True)
    return run_dir


def load_run_splits(cfg: Config) -> Splits:
    """The dataset's splits. Cross-validation carves no validation split: its settings come from folds of
    train, so a shipped val/ is training data too."""
    folds = cfg.train.cv_folds
    splits = load_splits(cfg.data.dataset, cfg.task, cfg.data.data_dir, cfg.data.species,
                         cfg.data.val_fraction, cfg.seed, carve=folds is None, labels_csv=cfg.data.labels_csv)
    if cfg.data.exclude:
        exclude_audited(splits, cfg.data.exclude, cfg.data.exclude_kinds)
    if folds is not None:
        joined = " (shipped val/ joined train)" if splits.val else ""
        splits.train, splits.val = sorted(splits.train + splits.val), []
        splits.notes["val"] = f"none: {folds}-fold cross-validation on train{joined}"
    n = cfg.data.eval_sample
    for split in ("val", "test") if n else ():
        whole = getattr(splits, split)
        if len(whole) > n:
            setattr(splits, split, stratified_sample(whole, n, cfg.seed))
            splits.sampled_from[split] = len(whole)
            splits.notes[split] = (f"{splits.notes.get(split, split)}; a stratified sample of {n} of its "
                                   f"{len(whole)} photos (--eval-sample, seed {cfg.seed})")
    return splits


def exclude_audited(splits: Splits, findings: str, kinds: list[str]) -> None:
    """Drop the photos an audit's findings.csv lists (of the given kinds) from every split; splits.excluded records
    each one (split, file, kind), and the notes say how many left each split."""
    listed = excluded_files(findings, kinds or None, splits.root)
    for split in ("train", "val", "test"):
        kept, dropped = [], []
        for path, label in getattr(splits, split):
            kind = listed.get(str(Path(path).resolve()))
            if kind is None:
                kept.append((path, label))
            else:
                dropped.append(path)
                splits.excluded.append({"split": split, "file": path, "kind": kind})
        if dropped:
            setattr(splits, split, kept)
            splits.notes[split] = (f"{splits.notes.get(split, split)}; {len(dropped)} photos excluded by {findings}"
                                   f" ({', '.join(kinds) if kinds else 'every kind'})")
    if not splits.train:
        raise DatasetError(f"data.exclude: {findings} lists every training photo; nothing is left to train on")


def stratified_sample(samples: list, n: int, seed: int) -> list:
    """n of the samples, each class in its share (seeded), in their original order."""
    labels = [label for _, label in samples]
    stratify = labels if min(labels.count(c) for c in set(labels)) >= 2 and n >= len(set(labels)) else None
    kept, _ = train_test_split(range(len(samples)), train_size=n, stratify=stratify, random_state=seed)
    return [samples[i] for i in sorted(kept)]


def run_preprocessing(cfg: Config) -> Preprocessing:
    """The architecture's normalisation at the configured (or its native) size."""
    return Preprocessing.for_model(ARCHS[cfg.model.arch], cfg.data.image_size, cfg.data.resize_ratio)


def resolve_config(cfg: Config, splits: Splits, pre: Preprocessing, device: torch.device) -> Config:
    """The run's config with everything `auto` or unset made concrete, frozen."""
    return cfg.updated({"data.dataset": splits.dataset, "data.image_size": pre.image_size,
                        **speed_settings(cfg, device)}).freeze()


def decode_splits(splits: Splits, pre: Preprocessing, cache_dir: Path) -> dict[str, DecodedImages]:
    return {name: decode_split(samples, pre, cache_dir, name)
            for name, samples in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if samples}


@contextmanager
def open_run(cfg: Config | None = None, resume: Path | None = None) -> Iterator[RunContext]:
    started = time.perf_counter()
    if resume is not None:
        cfg = rundir.read_config(Path(resume))
    device = resolve_device(cfg.train.device)
    check_precision(cfg.train.precision, device)  # an emulated bf16 stops here, before any data is read
    dist = distributed.setup(cfg.train, device)  # one process: a no-op
    run_dir = Path(resume) if resume is not None else dist.broadcast(new_run_dir(cfg) if dist.is_main else None)
    handler = setup_logging(run_dir if dist.is_main else None)
    tracker = Tracker()
    try:
        with logging_redirect_tqdm():
            previous = rundir.read_results(run_dir) if resume is not None else {}  # its Comet key, start time
            if cfg.train.threads:
                torch.set_num_threads(cfg.train.threads)
            log.info("run directory: %s", run_dir)
            with dist.main_first():  # rank 0 reads (or downloads) and decodes; the others then read its cache
                splits = load_run_splits(cfg)
                pre = run_preprocessing(cfg)
                decoded = decode_splits(splits, pre, cache_root(cfg.data.cache_dir))
            cfg = resolve_config(cfg, splits, pre, device)
            log.info("%s (%s): %d classes, sizes %s; %s", splits.dataset, splits.root, len(splits.classes),
                     splits.sizes(), splits.notes)
            log.info("speed settings for %s on %s: precision %s, channels_last %s", cfg.model.arch, device.type,
                     cfg.train.precision, cfg.train.channels_last)
            if dist.is_main:
                rundir.write_config(run_dir, cfg)
                # One tracked experiment per run, however many processes train it: rank 0's.
                tracker = create_tracker(cfg, run_dir, (previous.get("tracking") or {}).get("key"))
            yield RunContext(cfg, run_dir, resume is not None, device, dist, splits, pre, decoded, tracker, started,
                             previous.get("started_at") or datetime.now().isoformat(timespec="seconds"), previous)
            # Every rank finishes before any leaves the process group: rank 0 still writes figures and
            # results after the last collective, and a peer that tears gloo down meanwhile has aborted
            # ("terminate called without an active exception", SIGABRT, seen once in CI). Only on success,
            # as torchtitan does: a failed rank must neither wait for the others nor destroy a group in
            # which they may still be inside a collective; torchrun stops them.
            dist.barrier()
            distributed.teardown()
    except BaseException:
        tracker.end()  # a run that ended normally ended it in write_results, before results.json
        raise
    finally:
        if handler is not None:  # a sweep worker runs many experiments: each train.log gets only its own run
            logging.getLogger().removeHandler(handler)
            handler.close()

"""Evaluate a run's best checkpoint on any dataset whose classes match the model's by name."""

from __future__ import annotations

import tempfile
from pathlib import Path

from petlab import rundir
from petlab.data.cache import decode_split
from petlab.data.datasets import Splits, load_splits, normalise_class_name, read_split_folders
from petlab.data.files import visible_dirs
from petlab.data.loaders import make_loader
from petlab.engine.batches import predict_loader, resolve_device
from petlab.engine.metrics import classification_metrics
from petlab.engine.speed import predicting_precision, predicting_runtime
from petlab.errors import DatasetError
from petlab.export.onnx import CheckedOnnx
from petlab.paths import cache_root


def match_classes(model_classes: list[str], data_classes: list[str], where: str) -> dict[int, int]:
    """data label -> model label, matching names case- and separator-insensitively."""
    index = {normalise_class_name(c): i for i, c in enumerate(model_classes)}
    unmatched = [c for c in data_classes if normalise_class_name(c) not in index]
    if unmatched:
        raise DatasetError(f"classes in {where} that the model does not know: {unmatched}; "
                           f"the model's classes: {model_classes}")
    return {i: index[normalise_class_name(c)] for i, c in enumerate(data_classes)}


def eval_only_splits(root: Path, task: str) -> Splits | None:
    """A folder that holds only test/<class>/ (or only class folders) is a test split by itself."""
    folder = root / "test" if (root / "test").is_dir() else root
    if not visible_dirs(folder):
        return None
    found = read_split_folders(folder.parent, task, folder.name, None, None)
    return Splits("imagefolder", str(root), found["classes"], [], [], found["train"],
                  {"test": f"class folders of {folder}"})


def evaluate_run(run_dir: Path, data_dir: str | None = None, dataset: str | None = None,
                 split: str = "test", batch_size: int = 64, tta: str = "none", labels_csv: str | None = None) -> dict:
    trained = rundir.load_model(run_dir)
    model, cfg, classes, pre = trained.model, trained.cfg, trained.classes, trained.preprocessing
    try:  # test needs no validation carved (a folder of tiny classes has none to give)
        splits = load_splits(dataset, cfg.task, data_dir, None, cfg.data.val_fraction, cfg.seed,
                             carve=split != "test", labels_csv=labels_csv)
    except DatasetError as exc:
        # Not a training layout: a folder of only test/<class>/, or of only class folders, is a test set.
        usable = data_dir and not dataset and split == "test" and Path(data_dir).is_dir()
        splits = eval_only_splits(Path(data_dir), cfg.task) if usable else None
        if splits is None:
            raise exc
    samples = getattr(splits, split)
    if not samples:
        raise DatasetError(f"{splits.root} has no {split} split")
    to_model = match_classes(classes, splits.classes, splits.root)
    samples = [(path, to_model[label]) for path, label in samples]
    decoded = decode_split(samples, pre, cache_root(cfg.data.cache_dir), split)
    device = resolve_device(cfg.train.device)
    model.to(device)
    loader = make_loader(decoded, pre, False, batch_size, cfg.data.num_workers)
    with tempfile.TemporaryDirectory(prefix="petlab-evaluate-") as tmp:
        # on a CPU, the checkpoint's ONNX twin on ONNX Runtime (checked against it on the first batch)
        fast = CheckedOnnx(model, Path(tmp) / "model.onnx", cfg.train.threads) \
            if predicting_runtime(cfg.model.arch, cfg.train.precision, device) == "onnxruntime" else None
        precision = predicting_precision(cfg.train.precision, device)
        targets, probs, loss = predict_loader(fast or model, loader, pre, device, precision,
                                              cfg.train.channels_last and fast is None, desc=split, tta=tta)
    metrics = classification_metrics(targets, probs, loss, classes)
    return {"run_dir": str(run_dir), "dataset": splits.dataset, "data_dir": splits.root, "split": split,
            "tta": tta, "runtime": fast.runtime if fast is not None else "torch",
            "classes": classes, **metrics, "skipped_files": decoded.skipped_summary()}

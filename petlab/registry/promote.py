"""Promotion: pick a task's best run by a validation metric, export and verify it, register it.

The test split is reported in the model card but never consulted to choose: selecting on test
would turn it into a second validation set and its number into an optimistic estimate.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from petlab import rundir
from petlab.calibration import calibrate, reliability_panel
from petlab.data.datasets import DatasetError, load_splits
from petlab.data.files import visible_files
from petlab.data.images import BadImageError, load_rgb
from petlab.engine.latency import latency_here, measure_run_latency, this_cpu
from petlab.errors import PromotionError, PromotionRefused
from petlab.export import (
    EXPORT_FILES,
    PET_VIEW_FILE,
    PET_VIEW_FILES,
    ExportError,
    export_and_verify,
    export_pet_view,
)
from petlab.export.int8 import write_int8
from petlab.export.onnx import ONNX_FILE, annotate
from petlab.inference.model import EXPLAIN_ONNX, LoadedModel
from petlab.models.cam import export_class_maps
from petlab.models.pet_view import (
    OWN_BACKBONE_THRESHOLDS,
    SEPARATE_VIEW,
    SEPARATE_VIEW_FILE,
    OwnBackboneView,
    export_separate_view,
    own_backbone_head,
)
from petlab.monitor import METRICS, Monitor
from petlab.names import model_name
from petlab.paths import runs_root as default_runs_root
from petlab.registry.card import answering_files, onnx_metadata, preprocessing_steps
from petlab.registry.gate import compare_with_production, explain
from petlab.registry.store import Registry, RegistryError, now_iso
from petlab.registry.torch_fallback import TorchAsNumpy
from petlab.reports.figures import plot_reliability
from petlab.reports.runs import RunRecord, find_local_runs, read_local_run
from petlab.tracking.comet import create_tracker, set_model_statuses

log = logging.getLogger(__name__)

# What a card keeps of each split's metrics (val's "source" says when validation was cross-validation).
CARD_METRICS = ("accuracy", "top5_accuracy", "balanced_accuracy", "loss", "n", "source")
RELIABILITY_FIGURE = "reliability.png"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


def check_metric(metric: str) -> Monitor:
    if metric.startswith("test"):
        raise PromotionError(f"{metric}: promotion chooses by a validation metric only; the test split is "
                             f"reported, never used to choose (one of {', '.join(METRICS)})")
    try:
        return Monitor(metric)
    except ValueError as exc:
        raise PromotionError(str(exc)) from None


def chosen_metric(metric: str | None, records: list[RunRecord]) -> str:
    """The metric promotion chooses by: the one asked for, else the candidates' own train.monitor (they must
    agree: runs kept by different metrics have no common "best")."""
    if metric is not None:
        return metric
    monitors = sorted({r.monitor.metric for r in records})
    if len(monitors) > 1:
        raise PromotionError(f"the candidate runs were monitored by different metrics ({', '.join(monitors)}); "
                             "pass --metric to choose by one")
    return monitors[0]


def candidate_runs(task: str, runs_root: Path | None = None, study: str | None = None,
                   storage: str | None = None, run: Path | None = None) -> list[RunRecord]:
    """Completed runs of `task`: one run, the runs of a sweep study, or every run under runs_root."""
    if run is not None:
        record = read_local_run(Path(run))
        if record is None:
            raise PromotionError(f"{run} is not a completed run (it needs results.json with status completed "
                                 "and config.yaml)")
        if record.task != task:
            raise PromotionError(f"{run} is a {record.task} run, not {task}")
        return [record]
    if study is not None:
        from petlab.search.runner import study_run_dirs

        try:
            run_dirs = study_run_dirs(study, storage)
        except KeyError as exc:
            raise PromotionError(f"no study named {study!r} in {storage or 'the default storage'}") from exc
        records = [r for r in map(read_local_run, run_dirs) if r is not None]
        where = f"study {study}"
    else:
        runs_root = Path(runs_root) if runs_root else default_runs_root()
        records = find_local_runs([runs_root]) if runs_root.is_dir() else []
        where = str(runs_root)
    records = [r for r in records if r.task == task]
    if not records:
        raise PromotionError(f"no completed {task} runs in {where}; train one first, e.g. "
                             f"`python experiments/run.py --config experiments/configs/<name>.yaml`")
    return records


def select_best(records: list[RunRecord], metric: str, by_latency: bool = False) -> tuple[RunRecord, float]:
    """The best run by the validation metric; ties go to the faster run (by_latency: the one quicker to answer
    on this CPU, else the one quicker to train), then the earlier one. by_latency also scores a run timed as its
    int8 twin by the twin's validation accuracy: what would answer within the budget."""
    monitor = check_metric(metric)

    def as_served(record: RunRecord) -> float:  # a run timed as its int8 twin is scored as the twin, as in its sweep
        twin = (record.results.get("latency") or {}).get("int8") or {}
        if by_latency and metric == "val_accuracy" and twin.get("served") and "val_accuracy_int8" in twin:
            return twin["val_accuracy_int8"]
        return record.results["val"][monitor.key]

    scored = [(r, as_served(r)) for r in records if r.metrics("val").get(monitor.key) is not None]
    if not scored:
        raise PromotionError(f"none of the {len(records)} runs recorded {metric}")

    def faster(record: RunRecord) -> float:
        return (latency_here(record.results) if by_latency else record.results.get("wall_time_s")) or 0.0

    return min(scored, key=lambda rv: (monitor.sort_key(rv[1]), faster(rv[0]), rv[0].run))


def within_latency(records: list[RunRecord], max_latency_ms: float) -> list[RunRecord]:
    """The runs whose served batch-1 p50 on this CPU is at most max_latency_ms: a latency recorded here is read
    (a sweep's trial measured it), any other is measured now and recorded (engine/latency.py)."""
    timed = []
    for record in records:
        if latency_here(record.results) is None:
            log.info("measuring %s's serving latency on this CPU", record.path.name)
            record.results["latency"] = measure_run_latency(record.path)
        timed.append((record, latency_here(record.results)))
    eligible = [r for r, ms in timed if ms <= max_latency_ms]
    if not eligible:
        fastest, ms = min(timed, key=lambda rm: rm[1])
        raise PromotionError(f"none of the {len(records)} runs answers within {max_latency_ms:g} ms on this CPU "
                             f"({this_cpu()}); the fastest, {fastest.path.name}, takes {ms:.1f} ms")
    log.info("%d of %d runs answer within %g ms on this CPU", len(eligible), len(records), max_latency_ms)
    return eligible


def _image_files(folder: Path) -> list[tuple[Path, str]]:
    files = [p for p in visible_files(folder) if p.suffix.lower() in IMAGE_SUFFIXES]
    return [(p, p.parent.name) for p in files]


def run_splits(cfg, why: str):
    """The run's own splits, as it carved them (no download: promotion works on what is here)."""
    try:
        return load_splits(cfg.data.dataset, cfg.task, cfg.data.data_dir, cfg.data.species, cfg.data.val_fraction,
                           cfg.seed, download=False, carve=cfg.train.cv_folds is None,
                           labels_csv=cfg.data.labels_csv)
    except DatasetError as exc:
        raise PromotionError(f"{why} needs the run's photos, but its dataset is not here ({exc})") from exc


def sample_images(cfg, classes: list[str], images_dir: Path | None, per_class: int) -> list[tuple[Path, str]]:
    """Real photos for verification and the demo's examples: round-robin over the classes of the
    run's own validation split (or any folder given), so every class is represented."""
    if images_dir is not None:
        pool = _image_files(images_dir)
    else:
        splits = run_splits(cfg, "export verification (or pass --images DIR)")
        samples = splits.val or splits.test or splits.train
        pool = [(Path(path), splits.classes[label]) for path, label in samples]
    by_class: dict[str, list[Path]] = {}
    for path, label in pool:
        by_class.setdefault(label, []).append(path)
    picked = []
    for i in range(per_class):
        picked += [(paths[i], label) for label, paths in sorted(by_class.items()) if i < len(paths)]
    return picked


def candidate_predictions(record: RunRecord, model, cfg, classes: list[str], pre) -> dict:
    """The run's validation and test predictions: its predictions.npz, or -- for a run from before
    runs kept them -- predicted now from best.pt, as it would be served."""
    stored = rundir.read_predictions(record.path)
    if stored is not None:
        return stored
    log.info("%s has no predictions.npz (an older run): predicting its validation and test photos now", record.path)
    splits = run_splits(cfg, "calibration and the comparison with production")
    as_served = LoadedModel(cfg.task, "candidate", 0, {"classes": list(classes), "tta": record.results.get("tta")},
                            "eager", TorchAsNumpy(model.eval()), pre)
    found = {"classes": list(classes)}
    for split in ("val", "test"):
        samples = getattr(splits, split)
        if samples:
            files = [str(path) for path, _ in samples]
            try:
                probs = as_served.predict_images(load_rgb, files).astype(np.float64)
            except BadImageError as exc:
                raise PromotionError(f"a {split} photo is unreadable: {exc}") from exc
            found[split] = {"files": files, "targets": np.array([label for _, label in samples]), "probs": probs}
    return found


def _tensors(pre, paths: list[Path]) -> torch.Tensor:
    return pre.normalize(torch.stack([pre.eval_tensor(load_rgb(p)) for p in paths]))


def _build_card(record: RunRecord, cfg, classes, pre, metric, value, n_candidates, verification) -> dict:
    results = record.results
    return {
        "arch": cfg.model.arch,
        "dropout": cfg.model.dropout,  # shapes the head: the state dict is rebuilt with it
        "classes": list(classes),
        "num_classes": len(classes),
        "preprocessing": {**pre.to_dict(), "steps": preprocessing_steps(pre.to_dict())},
        "metrics": {split: {k: results[split][k] for k in CARD_METRICS if k in results[split]}
                    for split in ("val", "test") if results.get(split)},
        "selected_by": {"metric": metric, "value": value, "candidates": n_candidates},
        "tta": results.get("tta", "none"),  # the server predicts as the metrics were measured
        "dataset": results.get("dataset"),
        "test_near_copies_in_train": record.test_copies_in_train,
        # Cards are shown to strangers (the demo, a Space): folder names, never this machine's absolute paths.
        "dataset_root": Path(results["dataset_root"]).name if results.get("dataset_root") else None,
        "source_run": record.path.resolve().name,
        "comet": {k: (results.get("tracking") or {}).get(k) for k in ("key", "url", "mode")},
        "git": results.get("git"),
        "created_at": now_iso(),
        "torch_version": torch.__version__,
        "files": {EXPORT_FILES["onnx"]: "ONNX, what a CPU serves from (onnxruntime.InferenceSession)",
                  EXPORT_FILES["torch_export"]: "torch.export ExportedProgram (torch.export.load(...).module()); "
                                                "loading it runs code (its guards are exec()'d): load only a file "
                                                "you trust; petlab never loads it from a registry",
                  EXPORT_FILES["torchscript"]: "TorchScript, traced (torch.jit.load); loading it runs the code it "
                                               "holds: load only a file you trust; petlab never loads it from a "
                                               "registry",
                  "state_dict.pt": f"the eager weights (petlab.models.rebuild_trained('{cfg.model.arch}', "
                                   f"{len(classes)}, state_dict, dropout={cfg.model.dropout}))",
                  "examples/": "real photos from the validation split, for the demo",
                  RELIABILITY_FIGURE: "reliability diagram of val and test, before and after temperature scaling"},
        "verification": verification,
        "serving": {"cpu_order": [EXPORT_FILES["onnx"]],
                    "why": "ONNX Runtime measured several times faster than PyTorch on CPUs (README \"Speed\"), and "
                           "ONNX is inert: the PyTorch exports run code when loaded, so no server loads them"},
    }


def promote(task: str, metric: str | None = None, runs_root: Path | None = None, study: str | None = None,
            storage: str | None = None, run: Path | None = None, registry: Registry | None = None,
            images_dir: Path | None = None, status: str = "production", force: bool = False,
            int8: bool = False, max_latency_ms: float | None = None) -> dict:
    """Select (by `metric`, default the candidates' train.monitor); test against production (refused unless
    significantly better, or forced); calibrate; export, verify and register. Returns the new version's card.
    int8: also write the int8 twin and check it (export/int8.py); it serves only where the check passes.
    max_latency_ms: choose among the runs whose served batch-1 p50 on this CPU fits (engine/latency.py)."""
    registry = registry or Registry()
    if metric is not None:
        check_metric(metric)
    records = candidate_runs(task, runs_root, study, storage, run)
    metric = chosen_metric(metric, records)
    if max_latency_ms is not None:
        records = within_latency(records, max_latency_ms)
    best, value = select_best(records, metric, by_latency=max_latency_ms is not None)
    log.info("promoting %s (%s = %.4f, best of %d %s runs)", best.path, metric, value, len(records), task)
    # a run timed as its int8 twin (a sweep's int8 dimension) fits the budget as that twin, so the twin must serve
    timed_as_int8 = max_latency_ms is not None and (best.results.get("latency") or {}).get("int8", {}).get("served")
    if timed_as_int8 and not int8:
        log.info("%s was timed as its int8 twin: promoting it with the twin (--int8)", best.path.name)
        int8 = True
    trained = rundir.load_model(best.path)
    model, cfg, classes, pre = trained.model, trained.cfg, trained.classes, trained.preprocessing
    predictions = candidate_predictions(best, model, cfg, classes, pre)
    comparison = gate(registry, task, best, classes, predictions, force)
    calibration = run_calibration(predictions)
    images = sample_images(cfg, classes, images_dir, per_class=6)
    if len(images) < 11:
        raise PromotionError(f"export verification needs 11 real images; found {len(images)}")
    try:  # tracing batch (2 images) and check batches of 1 and 8, all different photos
        trace, one, eight = (_tensors(pre, [p for p, _ in part]) for part in (images[:2], images[2:3], images[3:11]))
    except BadImageError as exc:
        raise PromotionError(f"a verification image is unreadable: {exc}") from exc
    staged = registry.staging_dir(task)
    try:
        verification = export_and_verify(model, trace, [one, eight], staged)
        not_a_pet, view = export_not_a_pet_view(model, cfg.model.arch, len(classes), pre.image_size, trace,
                                                [one, eight], staged, [p for p, _ in images[:11]])
        explained = export_class_maps(model, cfg.model.arch, view, trace, [one, eight], staged)
        torch.save(model.state_dict(), staged / "state_dict.pt")
        (staged / "examples").mkdir()
        per_class_seen: dict[str, int] = {}
        for path, label in images:  # up to 2 examples per class, 8 in all
            if per_class_seen.get(label, 0) < 2 and sum(per_class_seen.values()) < 8:
                per_class_seen[label] = per_class_seen.get(label, 0) + 1
                shutil.copyfile(path, staged / "examples" / f"{label}-{per_class_seen[label]}{path.suffix.lower()}")
        if calibration:
            plot_calibration(predictions, calibration, staged / RELIABILITY_FIGURE,
                             f"{cfg.model.arch} on {cfg.data.dataset}")
            calibration["figure"] = RELIABILITY_FIGURE
        leaked = best.test_copies_in_train
        if leaked:
            log.warning("%s: %d test photos have a near-copy in train, so its test accuracy counts photos it has seen "
                        "(the card says so; experiments/audit.py lists them)", best.path.name, leaked)
        card = {**_build_card(best, cfg, classes, pre, metric, value, len(records), verification),
                "calibration": calibration, "compared_with": comparison, "not_a_pet": not_a_pet}
        if best.results.get("latency"):  # measured on the CPU it names; the budget it was chosen under
            card["latency"] = {**best.results["latency"], "budget_ms": max_latency_ms}
        if not_a_pet.get("file"):
            card["files"][PET_VIEW_FILE] = "torch.export program: (logits, ImageNet pet probability) in one pass"
            card["files"][PET_VIEW_FILES["onnx"]] = "the same as ONNX (outputs logits, pet_probability)"
        if explained:
            card["explain"] = explained
            card["files"][EXPLAIN_ONNX] = (f"ONNX: outputs {', '.join(explained['outputs'])}: the served outputs "
                                           "and the class-activation maps, one pass (what explain=true runs)")
        if int8:
            card["int8"] = write_int8(staged, card, pre, run_splits(cfg, "int8 calibration").train, predictions,
                                      cfg.seed)
            if timed_as_int8 and not card["int8"]["served"]:
                raise PromotionError(f"{best.path.name} answers within {max_latency_ms:g} ms as its int8 twin, which "
                                     f"failed its check here ({card['int8']['why']}); its fp32 files were not timed "
                                     "against the budget")
            for name in card["int8"]["files"]:  # only twins that passed are kept (and named)
                card["files"][name] = f"ONNX int8 twin of {name.replace('.int8', '')} (checked: card's int8; what " \
                                      "answers: card's answers)"
        if (staged / SEPARATE_VIEW_FILE).is_file():
            card["files"][SEPARATE_VIEW_FILE] = ("ONNX: ImageNet's separate view, its logits -> \"is this a pet?\" "
                                                 "(its preprocessing in its metadata)")
        card["answers"] = answering_files(card, staged)
        int8_files = (card.get("int8") or {}).get("files", [])  # only twins that passed are kept
        for onnx_file in (ONNX_FILE, PET_VIEW_FILES["onnx"], EXPLAIN_ONNX, *int8_files):  # each describes itself
            if (staged / onnx_file).is_file():
                annotate(staged / onnx_file, onnx_metadata(card, task, onnx_file))
        version = registry.add_version(task, staged, card, status, forced=force,
                                       gated_against=comparison["production_version"] if comparison else None)
    except BaseException:
        registry.discard(staged)
        raise
    try:
        comet = register_in_comet(best, cfg, registry, task, version, status)
    except Exception as exc:  # noqa: BLE001 - the local registry is the truth; Comet is a mirror
        log.warning("comet: registration failed (%s: %s); the local registry is unaffected", type(exc).__name__, exc)
        comet = {"registration": f"failed: {type(exc).__name__}: {exc}"}
    registry.annotate(task, version, comet={**card["comet"], **comet})
    return registry.card(task, version)


def export_not_a_pet_view(model, arch: str, num_classes: int, image_size: int, trace: torch.Tensor,
                          checks: list[torch.Tensor], staged: Path, photos: list[Path]) -> tuple[dict, object]:
    """How the server will tell a pet from anything else, for the card, and the view module when it is the
    model's own (else None). A model whose backbone is ImageNet's own gets pet_view.pt2 (and .onnx), which
    answers from the same forward pass; any other model is served beside the separate ImageNet view, one more
    forward pass per photo, written beside it as imagenet_view.onnx so the server needs no torch for it
    (`photos` check that export)."""
    head = own_backbone_head(model, arch, image_size)
    if head is not None:
        try:
            view = OwnBackboneView(model, arch, head, num_classes)
            exported = export_pet_view(view, model, trace, checks, staged)
            return {"view": "own_backbone", "arch": arch, "image_size": image_size,
                    "threshold": OWN_BACKBONE_THRESHOLDS[(arch, image_size)], **exported}, view
        except ExportError as exc:  # the separate view still works; say why the cheap one is missing
            log.warning("%s; the server will use the separate ImageNet view", exc)
    separate = export_separate_view([load_rgb(p) for p in photos], staged / SEPARATE_VIEW_FILE)
    return {**SEPARATE_VIEW, "onnx": separate}, None


def gate(registry: Registry, task: str, best: RunRecord, classes: list[str], predictions: dict,
         force: bool) -> dict | None:
    """The paired comparison with the current production version (None when there is none). Raises
    PromotionRefused unless the candidate is significantly better or `force` is given."""
    production = registry.production(task)
    if production is None:
        return None
    validation = predictions.get("val")
    if validation is None:
        raise PromotionError(f"{best.path} has no validation predictions to compare with production")
    source = (best.results.get("val") or {}).get("source") or "the run's validation split"
    comparison = compare_with_production(registry, task, production, classes, validation, source)
    message = explain(comparison, best.path.name)
    if not comparison["significantly_better"]:
        if not force:
            raise PromotionRefused(f"refused: {message}. `--force` promotes it anyway and records that in the card.")
        log.warning("forced: %s", message)
    else:
        log.info("%s", message)
    return {**comparison, "forced": force and not comparison["significantly_better"]}


def run_calibration(predictions: dict) -> dict | None:
    """Temperature scaling fitted on the validation predictions; None without any (the server then
    serves the raw probabilities, and the card says the version is uncalibrated)."""
    if "val" not in predictions:
        log.warning("no validation predictions: the version is not calibrated (temperature 1)")
        return None
    calibration = calibrate({split: (predictions[split]["probs"], predictions[split]["targets"])
                             for split in ("val", "test") if split in predictions})
    log.info("temperature %.3f (fitted on val): %s", calibration["temperature"],
             "; ".join(f"{split} ECE {calibration[split]['ece_before']:.4f} -> {calibration[split]['ece_after']:.4f}"
                       for split in ("val", "test") if split in calibration))
    return calibration


def plot_calibration(predictions: dict, calibration: dict, path: Path, title: str) -> None:
    panels = {split: reliability_panel(predictions[split]["probs"], predictions[split]["targets"],
                                       calibration["temperature"]) for split in ("val", "test") if split in predictions}
    plot_reliability(panels, path, f"reliability: {title}")


def register_in_comet(record: RunRecord, cfg, registry: Registry, task: str, version: int, status: str) -> dict:
    """The same version in Comet's model registry, registered from the run's own experiment.

    Online it is registered at once; offline, comet_ml queues the registration in a new archive
    of the same experiment (`<run>/comet/`), and `comet upload` performs it later.
    """
    key = (record.results.get("tracking") or {}).get("key")
    if cfg.tracking.backend == "none" or not key:
        return {"registration": "not registered in Comet: the source run was not tracked"}
    name, folder = model_name(task), registry.version_dir(task, version)
    tracker = create_tracker(cfg, record.path, previous_key=key)
    for file in [folder / EXPORT_FILES["torch_export"], folder / "card.json", folder / "card.md"]:
        tracker.log_model(name, file)  # the deployable export and its card (the weights are the run's model)
    card = registry.card(task, version)
    if (folder / RELIABILITY_FIGURE).is_file():  # calibration and the comparison, beside the run's own metrics
        tracker.log_image(folder / RELIABILITY_FIGURE, f"v{version}_reliability")
    calibration = card.get("calibration") or {}
    tracker.log_others({f"promotion.v{version}.{key}": value for key, value in {
        "temperature": calibration.get("temperature"),
        **{f"{split}_ece_{when}": (calibration.get(split) or {}).get(f"ece_{when}")
           for split in ("val", "test") for when in ("before", "after")},
        **{f"compared_with.{k}": v for k, v in (card.get("compared_with") or {}).items()
           if k in ("production_version", "difference", "p_value", "forced", "photos")}}.items() if value is not None})
    ok = tracker.register_model(name, f"{version}.0.0", status.capitalize(),
                                f"petlab {task} v{version}: {cfg.model.arch}", [f"task:{task}", f"v{version}"])
    tracker.end()
    if not ok:
        return {"registration": "failed (see the log); the local registry is unaffected"}
    if tracker.mode == "online":
        if status == "production":
            sync_comet_statuses(registry, task)
        return {"registration": f"registered online as {name} {version}.0.0 ({status})", "url": tracker.url}
    # shown from the runs folder: a card (and so the page and the Space) holds no absolute path
    archive, runs = Path(tracker.archive()).resolve(), record.path.resolve().parent
    shown = archive.relative_to(runs) if archive.is_relative_to(runs) else archive.name
    return {"registration": f"queued offline in {shown} under the runs folder (`comet upload` registers it)",
            "archive": str(shown)}


def sync_comet_statuses(registry: Registry, task: str) -> None:
    """Online only: mirror the local statuses of registered versions in Comet's registry."""
    if not os.environ.get("COMET_API_KEY"):
        return
    try:
        set_model_statuses(model_name(task), {f"{e['version']}.0.0": e["status"].capitalize()
                                              for e in registry.versions(task)
                                              if e["status"] in ("production", "archived", "staging")})
    except Exception as exc:  # noqa: BLE001 - the local registry stays the source of truth
        log.warning("comet: could not update registry statuses (%s: %s)", type(exc).__name__, exc)


def rollback(task: str, version: int, registry: Registry | None = None) -> dict:
    """An earlier version back in production. No comparison: it was production once, and a rollback
    is the way out of a bad promotion, which must never be refused."""
    registry = registry or Registry()
    entry = registry.entry(task, version)
    if entry["status"] == "production":
        raise RegistryError(f"{task} v{version} is already production")
    registry.set_status(task, version, "production")
    sync_comet_statuses(registry, task)
    return registry.card(task, version)

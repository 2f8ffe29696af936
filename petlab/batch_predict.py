"""Label a folder of photos: every file under the paths given, predicted in batches, one row per file.

`experiments/predict.py` is the command. The model is a registered version (the task's production one by
default), loaded as the server loads it: its export on the fast runtime, its card's preprocessing,
test-time augmentation and temperature, and its "is this a pet at all?" check. Or a run directory: its
best.pt, exported to ONNX and checked against eager on the first batch (export/onnx.py: CheckedOnnx),
calibrated by the temperature fitted on the run's own validation predictions, as promotion would.

The output (CSV or JSON) is rewritten atomically after every batch, so an interrupted run leaves a whole
file of the rows done so far; run the same command again and those files are not predicted again (rows
a different model wrote are).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from petlab import rundir
from petlab.calibration import fit_temperature
from petlab.data.files import is_hidden, visible_files
from petlab.data.images import BadImageError
from petlab.engine.speed import predicting_runtime
from petlab.errors import PetlabError
from petlab.export.onnx import CheckedOnnx
from petlab.fileio import atomic_write
from petlab.models.pet_view import PetView
from petlab.progress import progress
from petlab.registry.loaded import LoadedModel, load_version
from petlab.registry.store import Registry
from petlab.serving import classify_readable, decode_photo

log = logging.getLogger(__name__)
# ONNX Runtime's throughput on these CPUs levels off by batch 64 (benchmarks/inference_throughput.py)
BATCH_SIZE = 64
COLUMNS = ("input", "file", "label", "probability", "top_k", "recognised", "pet_probability", "error", "model")
OUTPUT_FORMATS = (".csv", ".json")


class PredictError(PetlabError):
    """A request predict.py cannot carry out (no such path, no model, an output it cannot read)."""


@dataclass(frozen=True)
class Photo:
    path: Path  # where it is read from
    input: str  # the argument it was found under, as given
    file: str  # its path relative to that argument (the file's name when the argument is the file)

    @property
    def key(self) -> tuple[str, str]:
        return self.input, self.file


def find_photos(inputs: list[str]) -> list[Photo]:
    """Every visible file under each input (files as given, folders recursively, hidden entries skipped:
    data/files.py), in a stable order. A missing input is an error before any work starts."""
    photos: list[Photo] = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_file():
            photos.append(Photo(path, given, path.name))
        elif path.is_dir():
            photos += [Photo(f, given, f.relative_to(path).as_posix()) for f in visible_files(path)]
        else:
            raise PredictError(f"no such file or folder: {given}")
    if not photos:
        raise PredictError(f"no files under {', '.join(inputs)} (hidden entries such as .DS_Store are skipped)")
    seen: set[tuple[str, str]] = set()
    return [p for p in photos if not (p.key in seen or seen.add(p.key))]


@contextmanager
def open_model(task: str | None = None, run: Path | None = None, version: int | None = None,
               registry: Registry | None = None, threads: int | None = None) -> Iterator[LoadedModel]:
    """The model to label with: a run directory's best.pt, or a registered version (the production one
    by default) of `task` (which may be left out when the registry holds one task)."""
    if run is not None:
        with tempfile.TemporaryDirectory(prefix="petlab-predict-") as tmp:
            yield run_model(Path(run), Path(tmp), threads)
        return
    registry = registry or Registry()
    tasks = registry.tasks()
    if task is None:
        if len(tasks) != 1:
            raise PredictError(f"pass --task: the registry at {registry.root} holds "
                               f"{', '.join(tasks) if tasks else 'no task'}")
        task = tasks[0]
    if version is None:
        entry = registry.production(task)
        if entry is None:
            raise PredictError(f"{task} has no production version in {registry.root}: promote a run "
                               f"(`python experiments/promote.py --task {task}`), or pass --run RUN_DIR")
        version = entry["version"]
    try:
        registry.card(task, version)
    except Exception as exc:  # noqa: BLE001 - an unknown task or version: one line that says which
        raise PredictError(f"{task} v{version} is not in the registry at {registry.root} ({exc})") from None
    yield load_version(registry, task, version)


def run_model(run_dir: Path, tmp: Path, threads: int | None) -> LoadedModel:
    """A run's best.pt as the server would serve it, without registering it."""
    trained = rundir.load_model(run_dir)
    cfg = trained.cfg
    results = rundir.read_results(run_dir)
    stored = rundir.read_predictions(run_dir) or {}
    temperature = fit_temperature(stored["val"]["probs"], stored["val"]["targets"]) if "val" in stored else 1.0
    if "val" not in stored:
        log.warning("%s has no validation predictions: its probabilities are not calibrated", run_dir)
    fast = predicting_runtime(cfg.model.arch, "fp32", torch.device("cpu")) == "onnxruntime"
    module = CheckedOnnx(trained.model, tmp / "model.onnx", threads) if fast else trained.model
    card = {"classes": trained.classes, "tta": results.get("tta", "none"),
            "calibration": {"temperature": temperature}}
    return LoadedModel(cfg.task, f"run {run_dir.resolve().name}", 0, card, "onnx" if fast else "eager", module,
                       trained.preprocessing)


def model_identity(model: LoadedModel) -> str:
    return model.name if model.version == 0 else f"{model.name} v{model.version}"


def read_rows(path: Path) -> list[dict]:
    """The rows of an earlier (possibly interrupted) output, to continue it."""
    if not path.is_file():
        return []
    try:
        if path.suffix == ".json":
            rows = json.loads(path.read_text())
            if not isinstance(rows, list):
                raise ValueError("expected a list of rows")
            return rows
        with path.open(newline="") as fh:
            return [{**row, "top_k": json.loads(row["top_k"]) if row.get("top_k") else []}
                    for row in csv.DictReader(fh)]
    except (OSError, ValueError, KeyError) as exc:
        raise PredictError(f"{path} exists but is not an output of predict.py ({exc}); move it away or pass "
                           "another --out") from None


def format_rows(rows: list[dict], suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(rows, indent=1)
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:  # top_k as JSON in its cell: [{"label": ..., "probability": ...}, ...]
        writer.writerow({**row, "top_k": json.dumps(row["top_k"]) if row.get("top_k") else ""})
    return out.getvalue()


def decode(photo: Photo):
    """The decoded photo, or the reason it cannot be read (the server's bounds: formats, size)."""
    try:
        return decode_photo(photo.path)
    except BadImageError as exc:
        return exc
    except OSError as exc:  # unreadable: permissions, a file that vanished
        return BadImageError("corrupt", f"{type(exc).__name__}: {exc}")


def rows_for(model: LoadedModel, batch: list[Photo], decoded: list, top_k: int, pet_view) -> list[dict]:
    """One row per photo of a batch: the readable ones predicted in one pass, the others with their reason."""
    identity, rows = model_identity(model), []
    for photo, d, answer in zip(batch, decoded, classify_readable(model, decoded, top_k, pet_view)):
        base = {"input": photo.input, "file": photo.file, "model": identity}
        if answer is not None:
            top = answer["predictions"]
            rows.append({**base, "label": top[0]["label"], "probability": top[0]["probability"], "top_k": top,
                         "recognised": answer["recognised"], "pet_probability": answer["pet_probability"],
                         "error": ""})
        else:
            rows.append({**base, "label": "", "probability": "", "top_k": [], "recognised": "",
                         "pet_probability": "", "error": str(d)})
    return rows


def predict_photos(model: LoadedModel, photos: list[Photo], out: Path | None = None, top_k: int = 5,
                   batch_size: int = BATCH_SIZE) -> list[dict]:
    """Rows for every photo, in the photos' order. With `out`, rows it already holds from this model are
    kept, and the file is rewritten atomically after each batch."""
    if out is not None and out.suffix not in OUTPUT_FORMATS:
        raise PredictError(f"--out {out}: write .csv or .json")
    if out is not None and (is_hidden(out.name) or not out.parent.is_dir()):
        raise PredictError(f"--out {out}: its folder does not exist, or the name is hidden")
    identity = model_identity(model)
    earlier = {(r["input"], r["file"]): r for r in (read_rows(out) if out else []) if r.get("model") == identity}
    done = {p.key: earlier[p.key] for p in photos if p.key in earlier}
    todo = [p for p in photos if p.key not in done]
    if done:
        log.info("%s: %d of %d files already done by %s; predicting the other %d", out, len(done), len(photos),
                 identity, len(todo))
    pet_view: list[PetView] = []

    def separate_view() -> PetView:  # only for a model without its own "is it a pet?" answer, loaded once
        if not pet_view:
            pet_view.append(PetView())
        return pet_view[0]

    def ordered() -> list[dict]:
        return [done[p.key] for p in photos if p.key in done]

    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    bar = progress(total=len(todo), desc=f"labelling with {identity}", unit="photo")
    # Decoding the next batch (Pillow releases the GIL) overlaps the model's pass over this one.
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = pool.submit(lambda b: list(pool.map(decode, b)), batches[0]) if batches else None
        for n, batch in enumerate(batches):
            decoded = pending.result()
            if n + 1 < len(batches):
                pending = pool.submit(lambda b: list(pool.map(decode, b)), batches[n + 1])
            for photo, row in zip(batch, rows_for(model, batch, decoded, top_k, separate_view)):
                done[photo.key] = row
            if out is not None:
                atomic_write(out, format_rows(ordered(), out.suffix))
            bar.update(len(batch))
    bar.close()
    rows = ordered()
    if out is not None and not batches:
        atomic_write(out, format_rows(rows, out.suffix))
    return rows

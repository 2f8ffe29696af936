"""Label a folder of photos: every file under the paths given, predicted in batches, one row per file.

`experiments/predict.py` is the command. The model is a registered version (the task's production one by
default), loaded as the server loads it: its export on the fast runtime, its card's preprocessing,
test-time augmentation and temperature, and its "is this a pet at all?" check. Or a run directory: its
best.pt, exported to ONNX and checked against eager on the first batch (export/onnx.py: CheckedOnnx),
calibrated by the temperature fitted on the run's own validation predictions, as promotion would.

Each batch's rows are appended to a journal beside the output (`.NAME.partial.jsonl`, hidden), and the
output (CSV or JSON) is written once, atomically, at the end: the work grows with the output, not with its
square. Run an interrupted command again and the files in the journal, or in an earlier output, are not
predicted again, as long as they came from the same model file (its content fingerprint, in the `model`
column) with the same --top-k. An output predict.py did not write is never overwritten without --force.
CSV cells that a spreadsheet would run as a formula (=, +, -, @) are written with a leading quote.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
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
from petlab.fileio import atomic_path, atomic_write, spreadsheet_value, write_csv
from petlab.inference.model import LoadedModel, files_fingerprint, load_version
from petlab.models import ARCHS
from petlab.models.cam import ClassMaps
from petlab.progress import progress
from petlab.registry.store import Registry
from petlab.registry.torch_fallback import TorchAsNumpy, load_eager_explain, load_weights_only
from petlab.serving import classify_readable, decode_photo, separate_view, served_model

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


def shown(name: str) -> str:
    """A file name as text any output can hold: bytes that are not UTF-8 (kept by Python as surrogates) are
    written as \\xNN escapes, so the row exists, reads back, and still tells the files apart."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def find_photos(inputs: list[str]) -> list[Photo]:
    """Every visible file under each input (files as given, folders recursively, hidden entries skipped:
    data/files.py), in a stable order. A missing input is an error before any work starts."""
    photos: list[Photo] = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_file():
            photos.append(Photo(path, shown(given), shown(path.name)))
        elif path.is_dir():
            photos += [Photo(f, shown(given), shown(f.relative_to(path).as_posix())) for f in visible_files(path)]
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
    yield load_version(registry, task, version, fallback=load_weights_only, explain_fallback=load_eager_explain)


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

    def explain_loader():  # eager: the maps of a run's model are asked for rarely enough
        if not ARCHS[cfg.model.arch].exact_cam:
            return None
        return "eager", TorchAsNumpy(ClassMaps(trained.model, trained.model, cfg.model.arch))

    return LoadedModel(cfg.task, f"run {run_dir.resolve().name}", 0, card, "onnx" if fast else "eager",
                       TorchAsNumpy(module),
                       trained.preprocessing,
                       fingerprint=files_fingerprint([run_dir / "checkpoints" / "best.pt"], f"T={temperature!r}"),
                       explain_loader=explain_loader)


def model_identity(model: LoadedModel) -> str:
    """What the `model` column says: the version, the runtime that served it, and its files' fingerprint."""
    name = model.name if model.version == 0 else f"{model.name} v{model.version}"
    return f"{name} ({served_model(model)['format']}, sha256:{model.fingerprint})"


def read_rows(path: Path, force: bool = False) -> list[dict]:
    """The rows of an earlier output of predict.py, to continue it. Any other file is refused (or, with
    `force`, ignored: it will be overwritten)."""
    if path.is_dir():
        raise PredictError(f"--out {path}: is a folder; name a .csv or .json file")
    if not path.is_file():
        return []
    try:
        if path.suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            ours = isinstance(rows, list) and all(isinstance(r, dict) and set(r) == set(COLUMNS) for r in rows)
        else:
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                ours = tuple(reader.fieldnames or ()) == COLUMNS
                rows = [{k: spreadsheet_value(v) for k, v in row.items()} for row in reader] if ours else []
            rows = [{**row, "top_k": json.loads(row["top_k"]) if row.get("top_k") else []} for row in rows]
    except (OSError, ValueError) as exc:
        ours, reason = False, f" ({type(exc).__name__}: {str(exc)[:100]})"
    else:
        reason = ""
    if ours:
        return rows
    if force:
        return []
    raise PredictError(f"{path} exists and is not an output of predict.py{reason}; pass --force to overwrite "
                       "it, or choose another --out")


def format_rows(rows: list[dict], suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(rows, indent=1, ensure_ascii=False)
    out = io.StringIO()
    # top_k as JSON in its cell: [{"label": ..., "probability": ...}, ...]
    write_csv(out, [{**row, "top_k": json.dumps(row["top_k"]) if row.get("top_k") else ""} for row in rows],
              list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    return out.getvalue()


def journal_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial.jsonl")


def open_journal(out: Path, append: bool):
    """The journal, for appending rows: never through a symbolic link (O_NOFOLLOW), and a fresh one only where
    no file of that name is left (O_EXCL) once an earlier journal of predict.py's has been removed; a file of
    that name that is not predict.py's journal is refused, never truncated."""
    path = journal_path(out)
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    if not append:
        if os.path.lexists(path):
            if path.is_symlink() or not path.is_file() or not is_journal(path):
                raise PredictError(f"{path} exists and is not a journal of predict.py; move it away, or choose "
                                   "another --out")
            path.unlink()
        flags |= os.O_CREAT | os.O_EXCL
    else:
        flags |= os.O_APPEND
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise PredictError(f"cannot open the journal {path}: {exc.strerror}") from None
    return os.fdopen(fd, "w", encoding="utf-8")


def is_journal(path: Path) -> bool:
    """Whether `path` starts as predict.py's journals do (a header line naming predict.py)."""
    try:
        with path.open(encoding="utf-8") as fh:
            return "predict.py" in json.loads(fh.readline(65536))
    except (OSError, ValueError, TypeError):
        return False


def read_journal(out: Path, header: dict) -> list[dict]:
    """The rows an interrupted run appended, when it labelled with the same model and options; a last line
    cut short by the interruption is dropped."""
    path = journal_path(out)
    if path.is_symlink() or not path.is_file():
        return []
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            try:
                record = json.loads(line)
            except ValueError:
                break
            if n == 0 and record != header:
                return []
            if n > 0:
                rows.append(record)
    return rows


def decode(photo: Photo):
    """The decoded photo, or the reason it cannot be read (the server's bounds: formats, size)."""
    try:
        return decode_photo(photo.path)
    except BadImageError as exc:
        return exc
    except OSError as exc:  # unreadable: permissions, a file that vanished
        return BadImageError("corrupt", f"{type(exc).__name__}: {exc}")


def rows_for(model: LoadedModel, batch: list[Photo], decoded: list, top_k: int, pet_view,
             explain_dir: Path | None = None) -> list[dict]:
    """One row per photo of a batch: the readable ones predicted in one pass, the others with their reason.
    With `explain_dir`, each readable photo's overlay of where the model looked (its top-1) is written there
    as <file>.png, from the same pass."""
    identity, rows = model_identity(model), []
    answers = classify_readable(model, decoded, top_k, pet_view, explain=explain_dir is not None)
    for photo, d, answer in zip(batch, decoded, answers):
        base = {"input": photo.input, "file": photo.file, "model": identity}
        if answer is not None and explain_dir is not None:
            write_overlay(answer["heatmap"].overlay(d), explain_dir / f"{photo.file}.png")
        if answer is not None:
            top = answer["predictions"]
            rows.append({**base, "label": top[0]["label"], "probability": top[0]["probability"], "top_k": top,
                         "recognised": answer["recognised"], "pet_probability": answer["pet_probability"],
                         "error": ""})
        else:
            rows.append({**base, "label": "", "probability": "", "top_k": [], "recognised": "",
                         "pet_probability": "", "error": str(d)})
    return rows


def write_overlay(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=1)  # zlib level 6 costs more than the model


def predict_photos(model: LoadedModel, photos: list[Photo], out: Path | None = None, top_k: int = 5,
                   batch_size: int = BATCH_SIZE, force: bool = False, explain_dir: Path | None = None) -> list[dict]:
    """Rows for every photo, in the photos' order. With `out`, rows an earlier run of the same model and
    options left (in `out` or in its journal) are kept; each batch is appended to the journal, and `out` is
    written once at the end. With `explain_dir`, an overlay of where the model looked per photo, there."""
    if explain_dir is not None and model.explainer() is None:
        raise PredictError(f"--explain: {model.name} has no class-activation map (its head is not linear on its "
                           "feature map: models/cam.py)")
    if out is not None and out.suffix not in OUTPUT_FORMATS:
        raise PredictError(f"--out {out}: write .csv or .json")
    if out is not None and (is_hidden(out.name) or not out.parent.is_dir()):
        raise PredictError(f"--out {out}: its folder does not exist, or the name is hidden")
    identity = model_identity(model)
    per_row = min(top_k, len(model.classes))
    header = {"predict.py": 1, "model": identity, "top_k": per_row}

    def same_run(row: dict) -> bool:  # the same model file and options; an unreadable file's row has no top-k
        return row.get("model") == identity and (row.get("error") or len(row.get("top_k") or []) == per_row)

    journalled = read_journal(out, header) if out else []
    earlier = (read_rows(out, force) + journalled) if out else []
    earlier_by_key = {(r["input"], r["file"]): r for r in earlier if same_run(r)}
    done = {p.key: earlier_by_key[p.key] for p in photos if p.key in earlier_by_key}
    todo = [p for p in photos if p.key not in done]
    if done:
        log.info("%s: %d of %d files already done by %s; predicting the other %d", out, len(done), len(photos),
                 identity, len(todo))
    pet_view: list = []

    def the_separate_view():  # only for a model without its own "is it a pet?" answer, loaded once
        if not pet_view:
            pet_view.append(separate_view(model.folder))
        return pet_view[0]

    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    bar = progress(total=len(todo), desc=f"labelling with {identity}", unit="photo")
    with contextlib.ExitStack() as stack:
        journal = None
        if out is not None and batches:
            journal = stack.enter_context(open_journal(out, append=bool(journalled)))
            if not journalled:  # a fresh journal, or one another model or --top-k wrote
                journal.write(json.dumps(header) + "\n")
        # Decoding the next batch (Pillow releases the GIL) overlaps the model's pass over this one.
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=2))
        pending = pool.submit(lambda b: list(pool.map(decode, b)), batches[0]) if batches else None
        for n, batch in enumerate(batches):
            decoded = pending.result()
            if n + 1 < len(batches):
                pending = pool.submit(lambda b: list(pool.map(decode, b)), batches[n + 1])
            rows = rows_for(model, batch, decoded, top_k, the_separate_view, explain_dir)
            for photo, row in zip(batch, rows):
                done[photo.key] = row
            if journal is not None:
                journal.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
                journal.flush()
            bar.update(len(batch))
    bar.close()
    rows = [done[p.key] for p in photos]
    if out is not None:
        atomic_write(out, format_rows(rows, out.suffix))
        journal_path(out).unlink(missing_ok=True)
    return rows

"""Export a trained model three times and prove each copy computes what the eager model computes.

- ONNX (onnx.py), run on ONNX Runtime: what a CPU serves from, being several times faster there.

- TorchScript by `torch.jit.trace`, as the seed project did. A TracerWarning means the trace
  may have frozen a data-dependent branch, so any TracerWarning fails the export.
- `torch.export` (an ExportedProgram saved as .pt2), the format current PyTorch recommends
  now that TorchScript is deprecated; the batch dimension is dynamic.
All take float32 NCHW tensors already normalised (preprocessing stays outside the graph, see
the model card) and return logits. Each file is saved, loaded back, and compared with the eager
model on real images at batch sizes 1 and 8 that differ from the tracing batch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import threading
import warnings
import zipfile
from pathlib import Path

import torch

from petlab.errors import ExportError
from petlab.export.onnx import ONNX_FILE, PET_VIEW_ONNX, OnnxModel, export_and_check
from petlab.inference.model import EXPORT_FILES, PET_VIEW_FILES

log = logging.getLogger(__name__)

PET_VIEW_FILE = PET_VIEW_FILES["torch_export"]  # (logits, pet probability) in one pass: an ImageNet backbone
MAX_BATCH = 1024


@contextlib.contextmanager
def _deprecation_notice_silenced():
    """TorchScript's deprecation notice is known (it is why .pt2 is preferred); hide only that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated")
        yield


def _trace(model: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, example)  # check_trace re-runs it: a mismatch is a TracerWarning too
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if tracer:
        details = "; ".join(f"{Path(w.filename).name}:{w.lineno}: {w.message}" for w in tracer[:3])
        raise ExportError(f"torch.jit.trace gave {len(tracer)} TracerWarning(s), so the traced graph may not "
                          f"match the model on other inputs: {details}")
    for w in caught:  # TorchScript's own deprecation notice is expected; anything else is worth seeing
        if not (issubclass(w.category, FutureWarning) and "deprecated" in str(w.message)):
            log.warning("while tracing: %s: %s", w.category.__name__, w.message)
    return traced


def _export(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:  # torch.export's errors are long; the first lines say what broke
        raise ExportError(f"torch.export failed: {str(exc).strip().splitlines()[0]}") from exc


# Saving without this machine's paths: an export goes public (the Space), and torch records where each
# operation's Python source lives (model.pt2 held 479 absolute paths, model.ts its debug tables). Neither is
# needed to run the graph; both are stripped, and the round trip below checks the files still compute.
def save_torch_export(program: torch.export.ExportedProgram, path: Path) -> None:
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                node.meta.pop("stack_trace", None)
    torch.export.save(program, path)


def save_torchscript(traced: torch.jit.ScriptModule, path: Path) -> None:
    """torch.jit.save, less the *.debug_pkl tables (source ranges, with file paths) that loading never needs."""
    buffer = io.BytesIO()
    with _deprecation_notice_silenced():
        torch.jit.save(traced, buffer)
    buffer.seek(0)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            if not info.filename.endswith(".debug_pkl"):
                out.writestr(info, source.read(info.filename))


def load_exported(path: str | Path):
    """A saved export as a callable module: tensor [N, 3, H, W] -> logits. For files petlab has just written
    (the export's round-trip check) and benchmarks of them: a .pt2 or .ts runs code when loaded (torch.export
    exec()s its guards_code, TorchScript its code), so no registry file is ever read with this (the server,
    predict.py and evaluate.py read ONNX or a weights-only state dict)."""
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxModel(path)
    with _deprecation_notice_silenced():
        if path.suffix == ".pt2":
            return load_torch_export(path).module()
        return torch.jit.load(path, map_location="cpu").eval()


_weights_only_lock = threading.Lock()


def load_torch_export(path: Path) -> torch.export.ExportedProgram:
    """torch.export.load, refusing whatever would run code. torch.export.load unpickles with
    `weights_only=False` where a file says a weight or constant is pickled, falls back to it where its
    sample inputs fail the weights-only unpickler, and `pickle.loads` any opaque object: a crafted model.pt2
    once ran its payload when the server started. Here a file naming Python objects is refused unread, and
    every torch.load inside is forced weights-only (TORCH_FORCE_WEIGHTS_ONLY_LOAD, which torch.load reads
    on each call), so a pickle that names anything but tensors fails to load instead of running."""
    from torch.export.pt2_archive.constants import CUSTOM_OBJ_FILENAME_PREFIX, OPAQUE_OBJ_FILENAME_PREFIX

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ExportError(f"{path.name} is not a torch.export archive: {exc}") from None
    objects = [n for n in names if Path(n).name.startswith((CUSTOM_OBJ_FILENAME_PREFIX, OPAQUE_OBJ_FILENAME_PREFIX))]
    if objects:
        raise ExportError(f"{path.name} holds pickled Python objects ({objects[0]}), which would run code when "
                          "loaded; refused")
    with _weights_only_lock:
        before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            return torch.export.load(path)
        except pickle.UnpicklingError as exc:
            reason = next((line for line in str(exc).splitlines() if "GLOBAL" in line or "global" in line),
                          type(exc).__name__)
            raise ExportError(f"{path.name} holds a pickle that is not plain tensors, which could run code "
                              f"when loaded; refused ({reason.strip()[:200]})") from None
        finally:
            if before is None:
                os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
            else:
                os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


@torch.no_grad()
def export_and_verify(model: torch.nn.Module, trace_batch: torch.Tensor, check_batches: list[torch.Tensor],
                      out_dir: Path) -> dict:
    """Write the exports into out_dir and verify each after a save/load round trip.

    Returns per format its file and the largest absolute difference from eager per batch size;
    raises ExportError when a format fails to export or disagrees with eager (torch.testing.assert_close
    at float32's default tolerances).
    """
    model = model.float().eval()
    trace_batch = trace_batch.float().contiguous()
    if trace_batch.shape[0] < 2:  # a batch of 1 would let torch.export specialise the batch size
        raise ExportError("the tracing batch needs at least 2 images")
    traced = _trace(model, trace_batch)
    save_torchscript(traced, out_dir / EXPORT_FILES["torchscript"])
    save_torch_export(_export(model, trace_batch), out_dir / EXPORT_FILES["torch_export"])
    report = {"onnx": export_and_check(model, trace_batch, check_batches, out_dir / ONNX_FILE)}
    for fmt in ("torch_export", "torchscript"):
        name = EXPORT_FILES[fmt]
        loaded = load_exported(out_dir / name)
        diffs = {}
        for batch in check_batches:
            expected, got = model(batch.float()), loaded(batch.float())
            try:
                torch.testing.assert_close(got, expected)
            except AssertionError as exc:
                raise ExportError(f"{name} disagrees with the eager model at batch size {batch.shape[0]}: "
                                  f"{exc}") from exc
            diffs[f"batch_{batch.shape[0]}"] = float((got - expected).abs().max())
        report[fmt] = {"file": name, "max_abs_diff": diffs}
    return report


@torch.no_grad()
def export_pet_view(view: torch.nn.Module, model: torch.nn.Module, trace_batch: torch.Tensor,
                    check_batches: list[torch.Tensor], out_dir: Path) -> dict:
    """Write `view` (x -> (logits, pet probability), models/pet_view.OwnBackboneView) as a torch.export
    program and as ONNX, and verify both after a round trip: their logits must be the served model's (so
    the files cannot drift apart) and their pet probability the eager view's. Returns the files and the
    largest differences; raises ExportError otherwise."""
    view, model = view.float().eval(), model.float().eval()
    save_torch_export(_export(view, trace_batch.float().contiguous()), out_dir / PET_VIEW_FILE)
    loaded = load_exported(out_dir / PET_VIEW_FILE)
    diffs = {}
    for batch in check_batches:
        batch = batch.float()
        (logits, pet), expected = loaded(batch), model(batch)
        try:
            torch.testing.assert_close(logits, expected)
            torch.testing.assert_close(pet, view(batch)[1])
        except AssertionError as exc:
            raise ExportError(f"{PET_VIEW_FILE} disagrees with the eager model at batch size {batch.shape[0]}: "
                              f"{exc}") from exc
        diffs[f"batch_{batch.shape[0]}"] = float((logits - expected).abs().max())
    onnx = export_and_check(view, trace_batch, check_batches, out_dir / PET_VIEW_ONNX, ("logits", "pet_probability"),
                            expected=lambda batch: (model(batch), view(batch)[1]))
    return {"file": PET_VIEW_FILE, "max_abs_diff": diffs, "onnx": onnx}


"""ONNX export, and ONNX Runtime wherever a model only predicts (serving, evaluate.py, the feature cache).

Why: measured side by side in one process (benchmarks/inference_throughput.py, fp32, same weights, outputs
equal within 1e-5), ONNX Runtime runs these convnets several times faster than PyTorch eager on a CPU --
on CPUs without native bf16 (4.0x for EfficientNet-Lite0 at batch 64 on a Zen 2 EPYC) and, in fp32, even
against PyTorch's bf16 on CPUs that have it (README, "Speed"). OpenVINO was the runner-up on the Zen 2
EPYC (1.95x) and is not a dependency. On CUDA, PyTorch stays (`runtime()`).

The exporter is torch.onnx's TorchScript-based one (`dynamo=False`): on EfficientNet-Lite0 it exports
in 0.9 s against the dynamo exporter's 10 s, with the same outputs; a run that caches backbone features
exports once per cache key, and promotion exports twice, so the difference is paid often. Every export
is checked after a round trip: ONNX Runtime's output against the eager model's within ONNX_TOLERANCE,
and the same top-1 class.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from petlab.errors import ExportError

# petlab/inference/model.py names a version's files and the runtime switch; the names stay importable here
from petlab.inference.model import MODEL_ONNX as ONNX_FILE
from petlab.inference.model import PET_VIEW_ONNX, RUNTIME_SWITCH, torch_first

__all__ = ["ONNX_FILE", "PET_VIEW_ONNX", "RUNTIME_SWITCH", "CheckedOnnx", "OnnxModel", "annotate", "check_close",
           "export_and_check", "export_onnx", "runtime"]

log = logging.getLogger(__name__)

OPSET = 17
# float32 kernels differ in summation order, not in what they compute: measured differences are ~1e-6
ONNX_TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}
CHECK_ROWS = 8  # CheckedOnnx compares this many photos of the first batch with the eager module


def runtime(device: torch.device | str = "cpu", precision: str = "fp32", onnx_over_bf16: bool = True) -> str:
    """Where a model that only predicts runs: "onnxruntime" on a CPU, except where it would replace a native
    bf16 that measured faster for the architecture (onnx_over_bf16 False: ResNets and the custom CNN, whose
    plain convolutions oneDNN runs fast in bf16); "torch" on CUDA, or when PETLAB_RUNTIME=torch says so."""
    if torch_first() or torch.device(device).type != "cpu":
        return "torch"
    return "torch" if precision == "bf16" and not onnx_over_bf16 else "onnxruntime"


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, outputs: tuple[str, ...] = ("logits",)) \
        -> Path:
    """Write `model` (float32 NCHW -> outputs) as ONNX with a dynamic batch dimension."""
    model = model.float().eval()
    try:
        # fp32 whatever autocast the caller is under (an evaluation at bf16 would trace bf16 casts into the graph)
        with warnings.catch_warnings(), torch.autocast("cpu", enabled=False):
            warnings.simplefilter("ignore")  # the exporter's own deprecation and tracing notices
            torch.onnx.export(model, (example.float().contiguous(),), str(path), dynamo=False, opset_version=OPSET,
                              input_names=["images"], output_names=list(outputs),
                              dynamic_axes={name: {0: "batch"} for name in ("images", *outputs)})
    except Exception as exc:  # noqa: BLE001 - the exporter's errors are long; the first line says what broke
        raise ExportError(f"ONNX export failed: {str(exc).strip().splitlines()[0]}") from exc
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        produced = model(example.float().contiguous())
    declare_output_shapes(path, [o.shape for o in (produced if isinstance(produced, tuple) else (produced,))])
    return Path(path)


def declare_output_shapes(path: Path, shapes: list) -> None:
    """Each output's declared shape: `batch`, then the sizes the model produced. The exporter's own guesses can be
    wrong: explain.onnx once declared class_maps [batch, C, batch, Divclass_maps_dim_3] for (N, C, 7, 7), which
    misleads anyone (or any tool) reading the graph's signature."""
    import onnx

    proto = onnx.load(str(path))
    for output, shape in zip(proto.graph.output, shapes, strict=True):
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        dims.add().dim_param = "batch"
        for size in shape[1:]:
            dims.add().dim_value = int(size)
    onnx.save(proto, str(path))


class OnnxModel:
    """An ONNX file on ONNX Runtime, called like the eager module: a float32 [N, 3, H, W] tensor in, a tensor
    (or a tuple of them, one per output) out. Intra-op threads follow torch's (a run's --threads). The
    torch-free session underneath is what the server uses (petlab/inference/runtime.py)."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None):
        from petlab.inference.runtime import OnnxSession

        self.onnx = OnnxSession(path, threads or torch.get_num_threads())
        self.session, self.input, self.path = self.onnx.session, self.onnx.input, self.onnx.path

    def __call__(self, x: torch.Tensor):
        out = self.onnx(x.detach().float().cpu().numpy())
        return tuple(torch.from_numpy(o) for o in out) if isinstance(out, tuple) else torch.from_numpy(out)

    def eval(self) -> OnnxModel:  # what callers of an eager module do, harmlessly
        return self

    def to(self, *args, **kwargs) -> OnnxModel:
        return self


class CheckedOnnx:
    """An eager module's ONNX twin on ONNX Runtime, for code that only predicts (evaluation, feature extraction).

    Exported to `path` on the first call (or reused when the file is there: a cache), and checked against the
    eager module in fp32 on that first batch before any output is used. A file that fails to load or to agree
    is exported again once; if that fails too, the eager module answers from then on (under the caller's
    autocast), with a warning. So the answers are never the runtime's unchecked ones."""

    def __init__(self, module: torch.nn.Module, path: Path, threads: int | None = None,
                 outputs: tuple[str, ...] = ("logits",)):
        self.module, self.path, self.threads, self.outputs = module, Path(path), threads, outputs
        self.session: OnnxModel | None = None
        self.checked = False

    @property
    def runtime(self) -> str:
        return "onnxruntime" if self.session is not None or not self.checked else "torch"

    def _export(self, example: torch.Tensor, fresh: bool) -> None:
        from petlab.fileio import atomic_path

        if fresh or not self.path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:  # two rows at least, so the batch stays dynamic
                export_onnx(self.module, example[:2] if len(example) > 1 else example.repeat(2, 1, 1, 1), tmp,
                            self.outputs)
        self.session = OnnxModel(self.path, self.threads)

    def _first(self, x: torch.Tensor) -> torch.Tensor:
        self.checked = True
        with torch.autocast(x.device.type, enabled=False):  # the first rows only: eager is the slow one
            expected = self.module(x[:CHECK_ROWS].float())
        for fresh in (False, True):
            try:
                self._export(x, fresh)
                got = self.session(x)
                check_close(got[:CHECK_ROWS], expected, self.path.name)
                return got
            except ExportError as exc:
                self.session = None
                if fresh:
                    log.warning("%s; predicting with PyTorch instead", exc)
                    return self.module(x)
                log.warning("%s; exporting it again", exc)
        raise AssertionError("unreachable")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.checked:
            return self._first(x)
        return self.session(x) if self.session is not None else self.module(x)

    def eval(self) -> CheckedOnnx:
        self.module.eval()
        return self


def check_close(got, expected, what: str) -> float:
    """The largest absolute difference; ExportError unless within ONNX_TOLERANCE with the same top-1."""
    got, expected = torch.as_tensor(got).float(), torch.as_tensor(expected).float()
    try:
        torch.testing.assert_close(got, expected, **ONNX_TOLERANCE)
    except AssertionError as exc:
        raise ExportError(f"{what} disagrees with the eager model: {exc}") from exc
    if got.dim() == 2 and not torch.equal(got.argmax(1), expected.argmax(1)):
        raise ExportError(f"{what} predicts a different top-1 class than the eager model")
    return float((got - expected).abs().max()) if got.numel() else 0.0


@torch.no_grad()
def export_and_check(model: torch.nn.Module, example: torch.Tensor, checks: list[torch.Tensor], path: Path,
                     outputs: tuple[str, ...] = ("logits",), expected=None) -> dict:
    """Export, load back on ONNX Runtime, and compare with the eager model on every check batch (their sizes
    differ from the export's, so the dynamic batch is exercised). expected(batch) gives the eager outputs
    (default: model(batch)). Returns the file, the tolerance and the largest difference per batch size."""
    export_onnx(model, example, path, outputs)
    loaded = OnnxModel(path)
    expected = expected or model
    diffs = {}
    for batch in checks:
        got, want = loaded(batch.float()), expected(batch.float())
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        diffs[f"batch_{batch.shape[0]}"] = max(check_close(g, w, f"{path.name} ({name}, batch {batch.shape[0]})")
                                               for g, w, name in zip(got, want, outputs))
    return {"file": path.name, "runtime": f"onnxruntime {_ort_version()}", "tolerance": dict(ONNX_TOLERANCE),
            "same_top1": True, "max_abs_diff": diffs}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def annotate(path: Path, metadata: dict[str, str]) -> None:
    """Write `metadata` into the file's metadata_props, replacing earlier entries of the same keys: what a
    program without petlab reads through onnxruntime (`session.get_modelmeta().custom_metadata_map`) or
    `onnx.load(path).metadata_props`. The graph is untouched."""
    import onnx

    model = onnx.load(str(path))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))

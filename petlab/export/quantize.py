"""int8 ONNX where it keeps the answers: ONNX Runtime's static quantisation, then the same check as every export.

The recipe: QDQ; convolution weights int8 per output channel; activations uint8 per tensor, their ranges
calibrated on the run's own training photos, never validation or test; the classifier's Gemm/MatMul left in
fp32 (a few thousand multiply-adds that decide the top-1). `benchmarks/int8.py` measured it as the one that
keeps the answers best here (docs/speed.md, "int8"). Then the int8 file is compared with its fp32 twin as it
would be served (petlab/export/int8.py): top-1 agreement on the validation photos, and test accuracy. It is
served only when both pass (AGREEMENT_MIN, ACCURACY_DROP_MAX); the card shows the figures either way, and why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from petlab.errors import ExportError

log = logging.getLogger(__name__)

AGREEMENT_MIN = 0.995  # top-1 agreement with fp32 on the validation photos
ACCURACY_DROP_MAX = 0.003  # test accuracy within 0.3 points of fp32's
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_METHOD, DEFAULT_PHOTOS = "minmax", 128  # chosen by benchmarks/int8.py (docs/speed.md, "int8")


class _Batches:
    """ONNX Runtime's CalibrationDataReader over batches already preprocessed (float32 NCHW)."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self._feeds = ({input_name: np.ascontiguousarray(b, dtype=np.float32)} for b in batches)

    def get_next(self):
        return next(self._feeds, None)


@contextlib.contextmanager
def onnxruntime_info_hidden():
    """ONNX Runtime's quantisation tools log through the root logger at INFO (160-286 "Increased scale..." lines
    a promotion once printed): below WARNING, what they log is dropped while the block runs."""
    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}onnxruntime{os.sep}" not in record.pathname

    root, own = logging.getLogger(), logging.getLogger("onnxruntime")  # `logging.info(...)`, and its named loggers
    level = own.level
    root.addFilter(keep)
    own.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeFilter(keep)
        own.setLevel(level)


def quantize_onnx(fp32: Path, out: Path, batches: Iterable[np.ndarray], method: str = DEFAULT_METHOD,
                  keep_classifier_fp32: bool = True) -> Path:
    """Static int8 quantisation of `fp32` into `out`, its activation ranges calibrated on `batches` (the run's
    training photos, preprocessed as served). The metadata (labels, preprocessing) is copied over."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ExportError(f"unknown calibration method {method!r}; one of {', '.join(CALIBRATION_METHODS)}")
    source = onnx.load(str(fp32))
    reader = _Batches(source.graph.input[0].name, batches)
    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                 "entropy": CalibrationMethod.Entropy}[method]
    with tempfile.TemporaryDirectory(prefix="petlab-int8-") as tmp, onnxruntime_info_hidden():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))  # shapes inferred and the graph folded: what quantises well
        classifier = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type in ("Gemm", "MatMul")]
        try:
            quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=calibrate,
                            nodes_to_exclude=classifier if keep_classifier_fp32 else None)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors vary; say which file, in one line
            raise ExportError(f"int8 quantisation of {fp32.name} failed: {str(exc).strip()[:300]}") from exc
    quantized = onnx.load(str(out))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(source.metadata_props)
    onnx.save(quantized, str(out))
    return out


def calibration_batches(pre, files: list, size: int = 32) -> list[np.ndarray]:
    """The photos in `files` decoded and preprocessed as served (`pre`), in batches of `size`: what quantize_onnx
    calibrates on and what the int8 checks compare."""
    from petlab.data.images import load_rgb

    return [pre.batch_array([load_rgb(f) for f in files[i:i + size]]) for i in range(0, len(files), size)]


def top1(probabilities: np.ndarray) -> np.ndarray:
    return np.asarray(probabilities).argmax(axis=1)


def verdict(agreement: float, val_photos: int, fp32_test: float | None, int8_test: float | None,
            extra: dict | None = None) -> dict:
    """The int8 check's figures and whether it is served: agreement at least AGREEMENT_MIN on the validation
    photos and test accuracy within ACCURACY_DROP_MAX of fp32's (extra: further agreements that must pass)."""
    difference = None if fp32_test is None or int8_test is None else int8_test - fp32_test
    failed = []
    if agreement < AGREEMENT_MIN:
        failed.append(f"top-1 agreement {agreement:.2%} on {val_photos} validation photos is under "
                      f"{AGREEMENT_MIN:.1%}")
    if difference is not None and abs(difference) > ACCURACY_DROP_MAX + 1e-9:  # 0.3 points is within
        failed.append(f"test accuracy {int8_test:.2%} against fp32's {fp32_test:.2%} ({100 * difference:+.2f} "
                      f"points) is not within {100 * ACCURACY_DROP_MAX:.1f} points")
    for name, value in (extra or {}).items():
        if value < AGREEMENT_MIN:
            failed.append(f"{name.replace('_', ' ')} {value:.2%} is under {AGREEMENT_MIN:.1%}")
    return {"val_top1_agreement": agreement, "val_photos": val_photos, "test_accuracy_fp32": fp32_test,
            "test_accuracy_int8": int8_test, "test_accuracy_difference_points": None if difference is None
            else 100 * difference, **(extra or {}),
            "thresholds": {"agreement_min": AGREEMENT_MIN, "test_accuracy_within_points": 100 * ACCURACY_DROP_MAX},
            "served": not failed, "why": "; ".join(failed) if failed else "both checks passed: int8 serves"}

"""An ONNX file on ONNX Runtime's CPU provider: float32 NCHW numpy in, numpy outputs out."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from petlab.errors import ExportError


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC", "Intel(R) Xeon(R) ..."), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


# CPU flags that give ONNX Runtime an 8-bit dot product accumulating in 32 bits (no saturation).
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def int8_kernels(cpuinfo: str | None = None) -> str:
    """Which of ONNX Runtime's int8 kernel families this CPU runs; an int8 twin's check holds for CPUs of the same
    family only. x86 with VNNI (AVX512-VNNI, AVX-VNNI or AMX) accumulates uint8 x int8 products without saturating;
    x86 without it (AVX2 alone: Zen 2, most laptops) takes other kernels, which may saturate (ONNX Runtime's
    quantize_static notes); ARM has its own. cpuinfo: /proc/cpuinfo's text (default: read it)."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "x86", "i686"):
        return machine or "unknown"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: the flags cannot be read, so no check made elsewhere is assumed to hold
            return "x86, extensions unknown"
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "x86 with VNNI" if VNNI_FLAGS & set(flags) else "x86 without VNNI"


class OnnxSession:
    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's own choice, one per physical core
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a damaged file: say which, in one line
            raise ExportError(f"{Path(path).name} does not load in ONNX Runtime: {str(exc).strip()[:300]}") from exc
        self.input = self.session.get_inputs()[0].name
        self.path = Path(path)

    def __call__(self, x: np.ndarray):
        """One array per output: a single one as it is, several as a tuple."""
        outputs = self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)})
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

"""An ONNX file on ONNX Runtime's CPU provider: float32 NCHW numpy in, numpy outputs out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from petlab.errors import ExportError


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

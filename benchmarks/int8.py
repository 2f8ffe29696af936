"""Which int8 calibration keeps the answers: ONNX Runtime's static quantisation (petlab/export/quantize.py) with
each calibration method and photo count, against fp32 on real photos.

    python benchmarks/int8.py [--models efficientnet_lite0 custom_cnn] [--methods minmax percentile entropy]
                              [--photos 32 128 512] [--val 512] [--json]

For each model (ImageNet weights where petlab bundles them, else seeded random ones: the custom CNN has none),
calibrated on photos of cats_and_dogs_filtered/train and checked on photos of cats_and_dogs_filtered/validation
(never the same), preprocessed as served (petlab/inference/preprocessing.py): top-1 agreement with fp32 over the
model's own classes (ImageNet's 1,000, or 1,000 random logits), the largest logit difference, the seconds the
quantisation took. The chosen default (quantize.py DEFAULT_METHOD, DEFAULT_PHOTOS) is the cheapest setting with
the best agreement here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import shared_data  # benchmarks/common.py (this script's folder)

from petlab.data.images import load_rgb
from petlab.export.onnx import export_onnx
from petlab.export.quantize import CALIBRATION_METHODS, quantize_onnx
from petlab.inference.preprocessing import Preprocessing
from petlab.inference.runtime import OnnxSession
from petlab.models import ARCHS, build_model

MODELS = ("efficientnet_lite0", "efficientnet_lite2", "resnet18", "custom_cnn")


def photos(split: str, count: int) -> list[Path]:
    """`count` photos of cats_and_dogs_filtered/<split>, cats and dogs alternating, in a fixed order."""
    root = shared_data() / "cats_and_dogs_filtered" / split
    cats, dogs = (sorted((root / c).glob("*.jpg")) for c in ("cats", "dogs"))
    return [p for pair in zip(cats, dogs) for p in pair][:count]


def batches(pre: Preprocessing, files: list[Path], size: int = 32) -> list[np.ndarray]:
    return [pre.batch_array([load_rgb(f) for f in files[i:i + size]]) for i in range(0, len(files), size)]


def run(session: OnnxSession, parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([session(b) for b in parts])


def measure(name: str, methods: list[str], counts: list[int], val: int, tmp: Path) -> dict:
    spec = ARCHS[name]
    torch.manual_seed(0)
    model, _ = build_model(name, 1000, pretrained=bool(spec.bundled_weights))
    model.eval()
    size = spec.image_size
    pre = Preprocessing(size, round(size / 0.875), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    fp32 = export_onnx(model, torch.randn(2, 3, size, size), tmp / f"{name}.onnx", ("logits",))
    check = batches(pre, photos("validation", val))
    reference = run(OnnxSession(fp32), check)
    rows = []
    for method in methods:
        for count in counts:
            calibration = batches(pre, photos("train", count))
            start = time.perf_counter()
            int8 = quantize_onnx(fp32, tmp / f"{name}.{method}.{count}.int8.onnx", calibration, method)
            seconds = time.perf_counter() - start
            got = run(OnnxSession(int8), check)
            row = {"method": method, "photos": count, "seconds": seconds,
                   "top1_agreement": float((got.argmax(1) == reference.argmax(1)).mean()),
                   "max_logit_diff": float(np.abs(got - reference).max())}
            rows.append(row)
            print(f"  {name} {method} {count}: agreement {row['top1_agreement']:.2%}, max diff "
                  f"{row['max_logit_diff']:.2f}, {seconds:.0f} s", file=sys.stderr)
    return {"weights": "imagenet" if spec.bundled_weights else "random (seed 0)", "val_photos": len(reference),
            "rows": rows}


def table(result: dict) -> str:
    lines = ["| model | weights | method | calibration photos | top-1 agreement | max logit diff | seconds |",
             "|---|---|---|---|---|---|---|"]
    for name, m in result["models"].items():
        for r in m["rows"]:
            lines.append(f"| {name} | {m['weights']} | {r['method']} | {r['photos']} | {r['top1_agreement']:.2%} | "
                         f"{r['max_logit_diff']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "custom_cnn"], choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=list(CALIBRATION_METHODS), choices=CALIBRATION_METHODS)
    parser.add_argument("--photos", nargs="+", type=int, default=[32, 128, 512], help="calibration photo counts")
    parser.add_argument("--val", type=int, default=512, help="validation photos the agreement is measured on")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from petlab.engine.speed import machine

    with tempfile.TemporaryDirectory(prefix="petlab-int8-") as tmp:
        models = {n: measure(n, args.methods, args.photos, args.val, Path(tmp)) for n in args.models}
    result = {"machine": machine(torch.device("cpu")), "models": models}
    print(json.dumps(result) if args.json else f"{result['machine']['cpu']}\n\n{table(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which int8 calibration keeps the answers: ONNX Runtime's static quantisation (petlab/export/quantize.py) with
each calibration method and photo count, against fp32 on real photos.

    python benchmarks/int8.py [--models efficientnet_lite0 custom_cnn] [--methods minmax percentile entropy]
                              [--photos 32 128] [--val 512] [--features N] [--json]

For each model (ImageNet weights where petlab bundles them, else seeded random ones: the custom CNN has none),
calibrated on photos of cats_and_dogs_filtered/train and checked on photos of cats_and_dogs_filtered/validation
(never the same), preprocessed as served (petlab/inference/preprocessing.py): top-1 agreement with fp32 over the
model's own classes (ImageNet's 1,000, or 1,000 random logits), the largest logit difference, the seconds the
quantisation took. The chosen default (quantize.py DEFAULT_METHOD, DEFAULT_PHOTOS) is the cheapest setting with
the best agreement here.

--features N (0 leaves it out): what int8 would do to the feature cache, whose features train a head. The headless
ImageNet Lite0 (what the cache computes) in fp32 and quantised as above (minmax, 128 train photos), features of N
photos of cats_and_dogs_filtered/train and of all of its validation/ (the test set), a logistic-regression head
(the features head is one linear layer) trained on each; the test accuracy of fp32 features, of int8 features,
and of the fp32-trained head answering int8 features, and the extraction speed of both.
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
from inference_throughput import load_model  # benchmarks/inference_throughput.py

from petlab.export.onnx import export_onnx
from petlab.export.quantize import CALIBRATION_METHODS, DEFAULT_PHOTOS, quantize_onnx
from petlab.export.quantize import calibration_batches as batches
from petlab.inference.preprocessing import Preprocessing
from petlab.inference.runtime import OnnxSession
from petlab.models import ARCHS

MODELS = ("efficientnet_lite0", "efficientnet_lite2", "resnet18", "custom_cnn")


def photos(split: str, count: int) -> list[Path]:
    """`count` photos of cats_and_dogs_filtered/<split>, cats and dogs alternating, in a fixed order."""
    root = shared_data() / "cats_and_dogs_filtered" / split
    cats, dogs = (sorted((root / c).glob("*.jpg")) for c in ("cats", "dogs"))
    return [p for pair in zip(cats, dogs) for p in pair][:count]


def run(session: OnnxSession, parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([session(b) for b in parts])


def measure(name: str, methods: list[str], counts: list[int], val: int, tmp: Path) -> dict:
    spec = ARCHS[name]
    model, size = load_model(name)  # ImageNet's whole classifier where bundled, else seeded random weights
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


def features_check(count: int, tmp: Path) -> dict:
    """Test accuracy of a head trained on fp32 against int8 backbone features (see --features)."""
    from inference_throughput import HeadlessModel  # benchmarks/inference_throughput.py
    from sklearn.linear_model import LogisticRegression

    from petlab.models.zoo import build_imagenet_classifier

    name = "efficientnet_lite0"
    size = ARCHS[name].image_size
    pre = Preprocessing(size, round(size / 0.875), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    backbone = HeadlessModel(build_imagenet_classifier(name).eval(), ARCHS[name].head)
    fp32 = export_onnx(backbone, torch.randn(2, 3, size, size), tmp / "backbone.onnx", ("features",))
    int8 = quantize_onnx(fp32, tmp / "backbone.int8.onnx", batches(pre, photos("train", DEFAULT_PHOTOS)))
    train, test = photos("train", count), photos("validation", 10 ** 6)
    y_train, y_test = ([0 if "/cats/" in str(f) else 1 for f in files] for files in (train, test))
    features, seconds = {}, {}
    for kind, path in (("fp32", fp32), ("int8", int8)):
        session = OnnxSession(path)
        start = time.perf_counter()
        features[kind] = [run(session, batches(pre, files)) for files in (train, test)]
        seconds[kind] = time.perf_counter() - start
        print(f"  features {kind}: {len(train) + len(test)} photos in {seconds[kind]:.0f} s", file=sys.stderr)
    heads = {kind: LogisticRegression(max_iter=2000).fit(f[0], y_train) for kind, f in features.items()}
    accuracy = {f"{head}_head_on_{kind}_features": float(heads[head].score(features[kind][1], y_test))
                for head in heads for kind in features}
    return {"train_photos": len(train), "test_photos": len(test), **accuracy,
            "photos_per_second": {k: (len(train) + len(test)) / s for k, s in seconds.items()}}


def table(result: dict) -> str:
    lines = ["| model | weights | method | calibration photos | top-1 agreement | max logit diff | seconds |",
             "|---|---|---|---|---|---|---|"]
    for name, m in result["models"].items():
        for r in m["rows"]:
            lines.append(f"| {name} | {m['weights']} | {r['method']} | {r['photos']} | {r['top1_agreement']:.2%} | "
                         f"{r['max_logit_diff']:.2f} | {r['seconds']:.0f} |")
    if f := result.get("features"):
        lines += ["", f"Lite0 features, head trained on {f['train_photos']} photos, tested on {f['test_photos']}:", "",
                  "| head trained on | tested on | test accuracy |", "|---|---|---|"]
        lines += [f"| {h} | {k} | {f[f'{h}_head_on_{k}_features']:.2%} |" for h in ("fp32", "int8")
                  for k in ("fp32", "int8")]
        lines.append("\nextraction: " + ", ".join(f"{k} {v:.0f} photos/s" for k, v in f["photos_per_second"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "custom_cnn"], choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=list(CALIBRATION_METHODS), choices=CALIBRATION_METHODS)
    # ONNX Runtime's percentile and entropy calibrators keep every activation in memory: 512 Lite0 photos took
    # more than 22 GB and were killed on a 24 GB machine; minmax keeps only running extremes
    parser.add_argument("--photos", nargs="+", type=int, default=[32, 128], help="calibration photo counts")
    parser.add_argument("--val", type=int, default=512, help="validation photos the agreement is measured on")
    parser.add_argument("--features", type=int, default=2000,
                        help="train photos for the feature-cache check (0 leaves it out)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from petlab.engine.speed import machine

    with tempfile.TemporaryDirectory(prefix="petlab-int8-") as tmp:
        models = {n: measure(n, args.methods, args.photos, args.val, Path(tmp)) for n in args.models}
        result = {"machine": machine(torch.device("cpu")), "models": models,
                  **({"features": features_check(args.features, Path(tmp))} if args.features else {})}
    print(json.dumps(result) if args.json else f"{result['machine']['cpu']}\n\n{table(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Inference speed on this CPU: PyTorch eager against ONNX Runtime (petlab's choice) and OpenVINO (the runner-up).

    python benchmarks/inference_throughput.py [--models efficientnet_lite0 ...] [--repeats 5] [--json]
                                              [--figure reports/speed/inference_throughput.png]

For each model (ImageNet weights where petlab bundles them, else random ones: speed does not depend on
the values), in one process, on the same weights and the same input: images/s at batch 64 and ms per
photo at batch 1, the median of --repeats timed calls after a warm-up, for
- eager fp32 + channels_last: what petlab ran before ONNX Runtime (and what a CPU without native bf16 runs);
- eager bf16 + channels_last: `auto` on a CPU with native bf16 (left out where it would be emulated);
- onnxruntime fp32: model.onnx, the runtime petlab predicts with on a CPU (export/onnx.py);
- onnxruntime int8: model.onnx quantised as `promote.py --int8` does (export/quantize.py), calibrated on 128
  photos of the shared cats_and_dogs_filtered/train; its row adds the top-1 agreement with onnxruntime fp32 on
  512 photos of cats_and_dogs_filtered/validation (over the model's 1,000 outputs: ImageNet's classes where
  petlab bundles the weights; --no-int8 leaves it out);
- openvino fp32: the same model.onnx on OpenVINO, where it is installed (it is not a petlab dependency;
  `pip install openvino` to measure it). Its precision hint is pinned to f32: it would pick bf16 itself.
--registry models/registry adds the production models' int8 check as promotion measured it (`promote.py --int8`,
petlab/export/int8.py): fp32 and int8 test accuracy, top-1 agreement on the run's validation photos, served or not.
"efficientnet_lite0_backbone" is the headless Lite0, i.e. what the feature cache computes.
Each row also gives the largest difference from eager fp32's outputs. Threads: --threads (default: all
cores), the same for every runtime. PETLAB_NATIVE_BF16=0 leaves the bf16 column out, as a laptop has it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import median_call_seconds  # benchmarks/common.py (this script's folder)

from petlab.engine.features import without_head
from petlab.engine.speed import machine, native_bf16
from petlab.export.onnx import OnnxModel, export_onnx
from petlab.export.quantize import quantize_onnx
from petlab.inference.runtime import OnnxSession
from petlab.models import ARCHS, build_model
from petlab.models.zoo import build_imagenet_classifier

MODELS = ("efficientnet_lite0", "efficientnet_lite0_backbone", "efficientnet_lite2", "resnet18", "custom_cnn")
BATCHES = (64, 1)


def load_model(name: str) -> tuple[torch.nn.Module, int]:
    """ImageNet's whole classifier where petlab bundles its weights (so int8's agreement is over real answers),
    else seeded random weights."""
    arch = name.removesuffix("_backbone")
    spec = ARCHS[arch]
    torch.manual_seed(0)
    model = build_imagenet_classifier(arch) if spec.bundled_weights else build_model(arch, 1000)[0]
    model.eval()
    if name.endswith("_backbone"):
        model = HeadlessModel(model, spec.head)
    return model, spec.image_size


class HeadlessModel(torch.nn.Module):
    """The backbone alone (the head's input), as the feature cache exports it."""

    def __init__(self, model: torch.nn.Module, head: str):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x):
        with without_head(self.model, self.head) as backbone:
            return backbone(x).flatten(1)


def eager(model, bf16: bool):
    def call(x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(x.contiguous(memory_format=torch.channels_last)).float()
    return call


def openvino_model(path: Path, threads: int):
    try:
        import openvino as ov
    except ImportError:
        return None
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                         "INFERENCE_PRECISION_HINT": "f32"})

    def call(x):
        return torch.from_numpy(compiled(x.numpy())[0])
    return call


def int8_twin(path: Path, size: int, threads: int) -> tuple[OnnxModel, float]:
    """The ONNX file quantised as promotion does, and its top-1 agreement with fp32 on real validation photos."""
    from int8 import batches, photos  # benchmarks/int8.py

    from petlab.inference.preprocessing import Preprocessing

    pre = Preprocessing(size, round(size / 0.875), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    twin = quantize_onnx(path, path.with_suffix(".int8.onnx"), batches(pre, photos("train", 128)))
    fp32, int8 = OnnxSession(path, threads), OnnxSession(twin, threads)
    check = batches(pre, photos("validation", 512))
    agreement = float(np.mean([(fp32(b).argmax(1) == int8(b).argmax(1)).mean() for b in check]))
    return OnnxModel(twin, threads), agreement


def measure(name: str, repeats: int, threads: int, tmp: Path, int8: bool = True) -> dict:
    model, size = load_model(name)
    example = torch.randn(max(BATCHES), 3, size, size)
    path = export_onnx(model, example[:2], tmp / f"{name}.onnx", ("outputs",))
    runtimes = {"eager_fp32": eager(model.to(memory_format=torch.channels_last), False)}
    if native_bf16(torch.device("cpu")):
        runtimes["eager_bf16"] = eager(model, True)
    runtimes["onnxruntime_fp32"] = OnnxModel(path, threads)
    agreement = None
    if int8 and not name.endswith("_backbone"):
        runtimes["onnxruntime_int8"], agreement = int8_twin(path, size, threads)
    if (ov := openvino_model(path, threads)) is not None:
        runtimes["openvino_fp32"] = ov
    with torch.inference_mode():
        reference = model(example[:8])
    out = {"image_size": size, "runtimes": {}}
    for runtime, fn in runtimes.items():
        with torch.inference_mode():
            diff = float((fn(example[:8]).float() - reference).abs().max())
        row = {"max_abs_diff": diff, **({"top1_agreement_with_fp32": agreement}
                                         if runtime == "onnxruntime_int8" else {})}
        for batch in BATCHES:
            seconds = median_call_seconds(fn, example[:batch], repeats if batch == 1 else max(2, repeats // 2),
                                          warmup=1)
            row[f"batch_{batch}_img_s"] = batch / seconds
            row[f"batch_{batch}_ms"] = 1000 * seconds
        out["runtimes"][runtime] = row
        print(f"  {name} {runtime}: {row['batch_64_img_s']:.1f} img/s at 64, {row['batch_1_ms']:.1f} ms at 1",
              file=sys.stderr)
    base = out["runtimes"]["eager_fp32"]
    for row in out["runtimes"].values():
        row["batch_64_over_eager_fp32"] = row["batch_64_img_s"] / base["batch_64_img_s"]
        row["batch_1_over_eager_fp32"] = base["batch_1_ms"] / row["batch_1_ms"]
    return out


def table(result: dict) -> str:
    m = result["machine"]
    lines = [f"{m['cpu']} ({m['cpu_capability']}, native bf16: {m['native_bf16']}), {result['threads']} threads, "
             f"torch {m['torch']}; median of {result['repeats']} calls (batch 1), {max(2, result['repeats'] // 2)} "
             "(batch 64)", "",
             "| model | runtime | batch 64 img/s | vs eager fp32 | batch 1 ms | vs eager fp32 | max diff | "
             "top-1 agreement with fp32 |", "|---|---|---|---|---|---|---|---|"]
    for name, model in result["models"].items():
        for runtime, r in model["runtimes"].items():
            agreement = r.get("top1_agreement_with_fp32")
            lines.append(f"| {name} | {runtime} | {r['batch_64_img_s']:.1f} | {r['batch_64_over_eager_fp32']:.2f}x | "
                         f"{r['batch_1_ms']:.1f} | {r['batch_1_over_eager_fp32']:.2f}x | {r['max_abs_diff']:.1e} | "
                         f"{'' if agreement is None else f'{agreement:.2%}'} |")
    return "\n".join(lines)


def production_int8(root: Path) -> dict:
    """Each task's production card's int8 entry (what promotion measured), by task; {} where none has one."""
    from petlab.registry.store import Registry

    registry, out = Registry(root), {}
    for task in registry.tasks():
        if (entry := registry.production(task)) and (int8 := registry.card(task, entry["version"]).get("int8")):
            out[task] = {"version": entry["version"], **int8}
    return out


def production_table(production: dict) -> str:
    lines = ["| production model | test accuracy fp32 | int8 | difference | top-1 agreement (val photos) | served |",
             "|---|---|---|---|---|---|"]
    for task, e in production.items():
        fp32, int8 = e.get("test_accuracy_fp32"), e.get("test_accuracy_int8")
        lines.append(f"| {task} v{e['version']} | {'' if fp32 is None else f'{fp32:.2%}'} | "
                     f"{'' if int8 is None else f'{int8:.2%}'} | {e.get('test_accuracy_difference_points') or 0:+.2f}"
                     f" points | {e['val_top1_agreement']:.2%} ({e['val_photos']}) | "
                     f"{'yes' if e['served'] else 'no: ' + e['why']} |")
    return "\n".join(lines)


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["models"])
    runtimes = sorted({r for m in result["models"].values() for r in m["runtimes"]},
                      key=["eager_fp32", "eager_bf16", "onnxruntime_fp32", "onnxruntime_int8", "openvino_fp32"].index)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(runtimes)
    for ax, batch, unit in ((axes[0], 64, "img_s"), (axes[1], 1, "ms")):
        for i, runtime in enumerate(runtimes):
            values = [result["models"][n]["runtimes"].get(runtime, {}).get(f"batch_{batch}_{unit}", 0) for n in names]
            ax.bar([j + i * width for j in range(len(names))], values, width, label=runtime)
        ax.set_xticks([j + width * (len(runtimes) - 1) / 2 for j in range(len(names))],
                      [n.replace("efficientnet_", "").replace("_backbone", "\nbackbone") for n in names])
        ax.set_ylabel("images/s (higher is better)" if unit == "img_s" else "ms per photo (lower is better)")
        ax.set_title(f"batch {batch}")
        if unit == "ms":
            ax.set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"Inference on {result['machine']['cpu']} ({result['machine']['cpu_capability']}, "
                 f"native bf16: {result['machine']['native_bf16']}), {result['threads']} threads")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls at batch 1 (half as many at 64)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="leave out the int8 rows")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--figure", type=Path, help="also draw the figures into this PNG")
    parser.add_argument("--registry", type=Path, help="also give the production models' int8 check from this "
                        "registry's cards (promote.py --int8)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="petlab-inference-") as tmp:
        models = {name: measure(name, args.repeats, args.threads, Path(tmp), args.int8) for name in args.models}
    result = {"machine": machine(torch.device("cpu")), "threads": args.threads, "repeats": args.repeats,
              "models": models}
    if args.registry:
        if not (production := production_int8(args.registry)):
            print(f"no production model in {args.registry} has an int8 check: promote with --int8", file=sys.stderr)
        result["production_int8"] = production
    if args.figure:
        figure(result, args.figure)
    print(json.dumps(result) if args.json else table(result) + (
        "\n\n" + production_table(result["production_int8"]) if result.get("production_int8") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

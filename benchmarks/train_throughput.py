"""Training images/s: the plain PyTorch loop a seed project writes vs petlab's engine, side by side.

    python benchmarks/train_throughput.py [--models resnet18 mobilenet_v2 custom_cnn] [--json]

On the shared cats-vs-dogs photos, per model at its default input size and batch size:
  plain   ImageFolder + PIL transforms decoded every batch, fp32, default memory format, Adam;
          images/s per timed window of --window batches after --warmup batches; the median.
  petlab  experiments' engine with its defaults (run_experiment: decoded-image cache, per-arch
          precision and memory format); --epochs short epochs of --window batches, the median
          training images/s of the epochs after the first.
Each measurement runs in its own process (peak RSS is that process's). Then inference images/s
at batch 1 and 32, eager vs torch.export vs TorchScript. `--json` prints one JSON object:
per model {"plain_img_s", "petlab_img_s", "ratio", "peak_rss_mb", ...}.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, median_call_seconds, shared_data  # benchmarks/common.py (this script's folder)

BATCH = {"resnet18": 32, "mobilenet_v2": 32, "custom_cnn": 16}


def data_root() -> Path:
    return shared_data() / "cats_and_dogs_filtered"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_loop(arch: str, batch: int, warmup: int, window: int, windows: int) -> dict:
    """What the seed projects wrote: decode + transform every image every epoch, fp32, NCHW."""
    import torch
    from torch import nn
    from torchvision import datasets, transforms

    from petlab.models import ARCHS, build_model

    spec = ARCHS[arch]
    tf = transforms.Compose([transforms.RandomResizedCrop(spec.image_size), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(data_root() / "train", tf), batch_size=batch,
                                         shuffle=True, num_workers=0)
    model, _ = build_model(arch, 2)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = nn.CrossEntropyLoss()
    rates, batches = [], iter(loader)

    def step():
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
        return len(x)

    for _ in range(warmup):
        step()
    for _ in range(windows):
        start, seen = time.perf_counter(), 0
        for _ in range(window):
            seen += step()
        rates.append(seen / (time.perf_counter() - start))
    return {"img_s": statistics.median(rates), "windows": rates, "peak_rss_mb": peak_rss_mb()}


def petlab_engine(arch: str, batch: int, window: int, epochs: int, overrides: dict) -> dict:
    """petlab's engine exactly as run.py runs it, with its defaults for this architecture."""
    import csv

    import yaml

    from petlab.config import load_config
    from petlab.engine.experiment import run_experiment

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, {"model.arch": arch, "task": "cats_vs_dogs", "data.data_dir": str(data_root()),
                                 "train.batch_size": batch, "train.epochs": epochs, "train.limit_batches": window,
                                 "tracking.backend": "none", "output_dir": out, **overrides})
        run_dir = run_experiment(cfg).run_dir
        with open(run_dir / "metrics.csv") as fh:
            rates = [float(row["images_per_second"]) for row in csv.DictReader(fh)][1:]  # epoch 1 warms up
        resolved = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]
        settings = {k: resolved[k] for k in ("precision", "channels_last")}
    return {"img_s": statistics.median(rates), "windows": rates, "peak_rss_mb": peak_rss_mb(), **settings}


def inference(arch: str, repeats: int) -> dict:
    """Inference images/s at batch 1 and 32: eager fp32 vs the exports petlab ships (model.onnx on ONNX Runtime)."""
    import torch

    from petlab.export import EXPORT_FILES, export_and_verify, load_exported
    from petlab.models import ARCHS, build_model

    size = ARCHS[arch].image_size
    model, _ = build_model(arch, 2)
    model.eval()
    images = torch.randn(11, 3, size, size)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        export_and_verify(model, images[:2], [images[2:3], images[3:11]], Path(tmp))
        models = {"eager": model, **{fmt: load_exported(Path(tmp) / name) for fmt, name in EXPORT_FILES.items()}}
        for batch in (1, 32):
            x = torch.randn(batch, 3, size, size)
            calls = repeats if batch == 1 else max(2, repeats // 8)
            for name, fn in models.items():
                out[f"{name}_batch_{batch}_img_s"] = batch / median_call_seconds(fn, x, calls, warmup=1)
    return out


def child(args) -> dict:
    if args.child == "plain":
        return plain_loop(args.model, args.batch, args.warmup, args.window, args.windows)
    if args.child == "petlab":
        return petlab_engine(args.model, args.batch, args.window, args.windows + 1, dict(args.set))
    return inference(args.model, args.repeats)


def measure(kind: str, model: str, args, extra=()) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--model", model, "--batch", str(BATCH.get(model, 32)),
               "--warmup", str(args.warmup), "--window", str(args.window), "--windows", str(args.windows),
               "--repeats", str(args.repeats), *extra]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} {model} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(BATCH))
    parser.add_argument("--warmup", type=int, default=2, help="plain loop: batches before timing")
    parser.add_argument("--window", type=int, default=4, help="batches per timed window (petlab: per epoch)")
    parser.add_argument("--windows", type=int, default=3, help="timed windows (petlab: epochs after the first)")
    parser.add_argument("--repeats", type=int, default=20, help="inference calls timed at batch 1")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override a config key of the petlab runs (to compare settings)")
    parser.add_argument("--no-inference", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=["plain", "petlab", "inference"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    extra = [a for key, value in args.set for a in ("--set", key, value)]
    results = {}
    for model in args.models:
        plain = measure("plain", model, args)
        petlab = measure("petlab", model, args, extra)
        results[model] = {"plain_img_s": plain["img_s"], "petlab_img_s": petlab["img_s"],
                          "ratio": petlab["img_s"] / plain["img_s"],
                          "peak_rss_mb": {"plain": plain["peak_rss_mb"], "petlab": petlab["peak_rss_mb"]},
                          "batch_size": BATCH.get(model, 32), "petlab_settings": {
                              k: petlab.get(k) for k in ("precision", "channels_last")},
                          "windows": {"plain": plain["windows"], "petlab": petlab["windows"]}}
        if not args.no_inference:
            results[model]["inference"] = measure("inference", model, args)
        if not args.json:
            r = results[model]
            print(f"{model:>13}: plain {r['plain_img_s']:6.1f} img/s, petlab {r['petlab_img_s']:6.1f} img/s, "
                  f"x{r['ratio']:.2f} (batch {r['batch_size']}, petlab {r['petlab_settings']}; peak RSS "
                  f"{r['peak_rss_mb']['plain']:.0f} / {r['peak_rss_mb']['petlab']:.0f} MB)", flush=True)
            if "inference" in r:
                print("               inference img/s: " + ", ".join(f"{k.replace('_img_s', '')} {v:.1f}"
                                                                   for k, v in r["inference"].items()), flush=True)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving latency of the production model, and exported vs eager inference time, in one run.

    python benchmarks/serve_latency.py [--task cats_vs_dogs] [--requests 200] [--concurrency 1 8] [--json]

Starts the demo (a real server in its own process) on the registry's production model, posts
real photos to /api/predict at each concurrency, and prints client-side latency p50/p95, the
server's own latency_ms, throughput and errors. It does so side by side: serving as petlab does
(model.onnx on ONNX Runtime, on a CPU, or its int8 twin where the card says its check passed), on PyTorch
(PETLAB_RUNTIME=torch: the eager weights; the server once served model.pt2, which runs code when loaded),
and -- for a version with an int8 twin -- the fp32 ONNX file (PETLAB_RUNTIME=onnxruntime_fp32),
each p50 over the PyTorch one's and int8's over fp32's. Then, in this process, times each export against
the eager model (same weights, same photos) at batch sizes 1 and 8.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from common import demo_process, median_call_seconds, shared_data  # benchmarks/common.py (this script's folder)

from petlab.data.images import load_rgb
from petlab.data.transforms import Preprocessing
from petlab.engine.speed import machine
from petlab.export import EXPORT_FILES, load_exported
from petlab.export.onnx import RUNTIME_SWITCH
from petlab.registry import Registry
from petlab.registry.torch_fallback import load_eager


def percentile(values, q) -> float:
    return float(np.percentile(np.asarray(values), q))


def load_phase(url: str, task: str, photos: list[bytes], requests: int, concurrency: int) -> dict:
    def one(i: int):
        start = time.perf_counter()
        response = client.post(f"{url}/api/predict", files={"file": (f"{i}.jpg", photos[i % len(photos)])},
                               data={"task": task})
        elapsed = 1000 * (time.perf_counter() - start)
        ok = response.status_code == 200
        return elapsed, (response.json()["latency_ms"] if ok else None), ok

    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        for i in range(min(10, requests)):  # warm-up, not counted
            one(i)
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    client_ms = [r[0] for r in results]
    server_ms = [r[1] for r in results if r[2]]
    return {"concurrency": concurrency, "requests": requests, "errors": sum(not r[2] for r in results),
            "p50_ms": percentile(client_ms, 50), "p95_ms": percentile(client_ms, 95),
            "server_p50_ms": percentile(server_ms, 50) if server_ms else None,
            "throughput_rps": requests / wall}


def exported_vs_eager(registry: Registry, task: str, version: int, photos: list[Path], repeats: int) -> dict:
    """Median ms per call of the eager model and of each export, and each export's time over eager's."""
    card = registry.card(task, version)
    folder = registry.version_dir(task, version)
    models = {"eager": load_eager(registry, task, version),
              **{fmt: load_exported(folder / name) for fmt, name in EXPORT_FILES.items()}}
    pre = Preprocessing.from_dict(card["preprocessing"])
    images = pre.normalize(torch.stack([pre.eval_tensor(load_rgb(p)) for p in photos[:8]]))
    out = {}
    for size in (1, 8):
        ms = {name: 1000 * median_call_seconds(model, images[:size], repeats) for name, model in models.items()}
        out[f"batch_{size}"] = {**{f"{name}_ms": v for name, v in ms.items()},
                                **{f"{fmt}_over_eager": ms[fmt] / ms["eager"] for fmt in EXPORT_FILES}}
    return out


def served_format(serving: dict) -> str:
    """What the server said it predicts with (/api/health), e.g. "onnx" or "torch_export"."""
    models = serving["served"].get("models") or {}
    return ", ".join(sorted({str(m.get("format")) for m in models.values() if isinstance(m, dict)})) or "?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="cats_vs_dogs")
    parser.add_argument("--registry", help="default $PETLAB_REGISTRY_DIR or models/registry")
    parser.add_argument("--photos", type=Path, default=None, help="folder of real photos (default: the shared "
                                                                  "cats_and_dogs_filtered/validation)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per batch size, exported vs eager")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    registry = Registry(args.registry)
    production = registry.production(args.task)
    if production is None:
        print(f"error: no production {args.task} model in {registry.root}; run "
              f"`python experiments/promote.py --task {args.task}` first", file=sys.stderr)
        return 2
    folder = args.photos or shared_data() / "cats_and_dogs_filtered" / "validation"
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:64]
    if len(paths) < 8:
        print(f"error: need at least 8 photos in {folder}", file=sys.stderr)
        return 2
    photos = [p.read_bytes() for p in paths]
    torch.set_num_threads(os.cpu_count() or 1)

    serving = {}
    int8 = (registry.card(args.task, production["version"]).get("int8") or {}).get("served")
    for runtime in ("torch", *(["onnxruntime_fp32"] if int8 else []), "onnxruntime"):  # before, then as served now
        env = {**os.environ, RUNTIME_SWITCH: runtime}
        with tempfile.TemporaryDirectory() as tmp, demo_process(registry.root, Path(tmp) / "demo.log", env=env) as url:
            phases = [load_phase(url, args.task, photos, args.requests, c) for c in args.concurrency]
            served = httpx.get(f"{url}/api/health", timeout=30).json()  # once a request has loaded the model
        serving[runtime] = {"served": served, "phases": phases}
    for before, after in zip(serving["torch"]["phases"], serving["onnxruntime"]["phases"]):
        after["p50_over_torch"] = after["p50_ms"] / before["p50_ms"]
    for fp32, after in zip(serving.get("onnxruntime_fp32", {}).get("phases", []), serving["onnxruntime"]["phases"]):
        after["p50_over_fp32"] = after["p50_ms"] / fp32["p50_ms"]
    inference = exported_vs_eager(registry, args.task, production["version"], paths, args.repeats)
    result = {"task": args.task, "version": production["version"], "cpu_count": os.cpu_count(),
              "machine": machine(torch.device("cpu")), "serving": serving["onnxruntime"]["phases"],
              "serving_before": serving["torch"]["phases"], "served_format": served_format(serving["onnxruntime"]),
              "served_format_before": served_format(serving["torch"]), "inference": inference,
              **({"serving_fp32": serving["onnxruntime_fp32"]["phases"],
                  "served_format_fp32": served_format(serving["onnxruntime_fp32"])} if int8 else {})}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.task} v{production['version']} ({registry.card(args.task, production['version'])['arch']}), "
          f"{result['machine']['cpu']}, {os.cpu_count()} CPU cores, {args.requests} requests per row")
    print(f"{'served from':>22} {'concurrency':>11} {'p50 ms':>8} {'p95 ms':>8} {'server p50':>10} {'req/s':>7} "
          f"{'errors':>6}")
    rows = (("serving_before", "served_format_before"), ("serving_fp32", "served_format_fp32"),
            ("serving", "served_format"))
    for key, fmt in ((key, result[fmt]) for key, fmt in rows if key in result):
        for p in result[key]:
            ratio = f"  ({p['p50_over_torch']:.2f}x the p50 before)" if "p50_over_torch" in p else ""
            ratio += f"  ({p['p50_over_fp32']:.2f}x fp32 ONNX's p50)" if "p50_over_fp32" in p else ""
            print(f"{fmt:>22} {p['concurrency']:>11} {p['p50_ms']:>8.1f} {p['p95_ms']:>8.1f} "
                  f"{p['server_p50_ms'] or 0:>10.1f} {p['throughput_rps']:>7.1f} {p['errors']:>6}{ratio}")
    print(f"inference, median ms of {args.repeats} calls:")
    for size in (1, 8):
        b = inference[f"batch_{size}"]
        print(f"  batch {size}: eager {b['eager_ms']:.1f}, " + ", ".join(
            f"{fmt} {b[f'{fmt}_ms']:.1f} ({b[f'{fmt}_over_eager']:.2f}x eager's time)" for fmt in EXPORT_FILES))
    phases = result["serving"] + result["serving_before"] + result.get("serving_fp32", [])
    return 0 if all(p["errors"] == 0 for p in phases) else 1


if __name__ == "__main__":
    sys.exit(main())

"""What hostile requests cost a real demo server: responses, wall time and the server's peak RSS growth.

    python benchmarks/hostile_load.py [--registry DIR] [--task cats_vs_dogs] [--json]

Starts the demo (demo/app.py, its own process, 127.0.0.1) on the registry's production model and
sends, one case at a time:
- a chunked 200 MB body (no Content-Length) to /api/predict, and one to Gradio's /gradio_api/upload;
- ten concurrent 8000 x 8000 RGBA PNGs (265 KB each; 256 MB each once decoded);
- ten concurrent 6000 x 6000 RGBA PNGs (36 MP: under the serving pixel limit, so they are decoded);
- an EPS file (Pillow would hand it to Ghostscript);
- 64 concurrent ordinary photos.
For each it prints the status codes, the wall time, and the server's peak RSS over its RSS just
before the case (the kernel's high-water mark, reset per case through /proc/PID/clear_refs). Then
it checks that the server is still up and answers an ordinary photo. The upload folder Gradio uses
(GRADIO_TEMP_DIR, a temporary one here) is listed after each case: nothing may be left behind.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from common import demo_server, shared_data  # benchmarks/common.py (this script's folder)
from PIL import Image

from petlab.engine.speed import machine
from petlab.registry import Registry

CHUNK = 64 * 1024


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (40, 160, 90, 128)).save(buffer, "PNG")
    return buffer.getvalue()


def eps() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "EPS")
    return buffer.getvalue()


def chunked_body(total: int, field: str, sent: list[int]):
    """A multipart body streamed in chunks (so httpx sends no Content-Length); counts what it gave away."""
    yield (f'--petlab\r\nContent-Disposition: form-data; name="{field}"; filename="big.jpg"\r\n'
           f"Content-Type: image/jpeg\r\n\r\n").encode()
    block = b"\xff" * CHUNK
    while sent[0] < total:
        sent[0] += len(block)
        yield block
    yield b"\r\n--petlab--\r\n"


def post_chunked(url: str, route: str, field: str, total: int) -> dict:
    sent = [0]
    try:
        response = httpx.post(f"{url}{route}", content=chunked_body(total, field, sent), timeout=300,
                              headers={"Content-Type": "multipart/form-data; boundary=petlab"})
        status = response.status_code
    except httpx.HTTPError as exc:  # the server may close the connection while the client still writes
        status = type(exc).__name__
    return {"status": status, "client_sent_mb": round(sent[0] / 2**20, 1)}


def post_photos(url: str, task: str, files: list[tuple[str, bytes]], concurrency: int) -> list:
    def one(item):
        name, data = item
        try:
            return httpx.post(f"{url}/api/predict", files={"file": (name, data)}, data={"task": task},
                              timeout=300).status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, files))


def measure(pid: int, upload_dir: Path, send) -> dict:
    """Run one case; the server's peak RSS over its RSS before it, and what is left in the upload folder."""
    before_files = {p for p in upload_dir.rglob("*") if p.is_file()}
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = rss_kb(pid, "VmRSS")
    start = time.perf_counter()
    outcome = send()
    wall = time.perf_counter() - start
    left = sorted(str(p.relative_to(upload_dir)) for p in upload_dir.rglob("*")
                  if p.is_file() and p not in before_files)
    return {"outcome": outcome, "wall_s": round(wall, 2),
            "peak_rss_growth_mb": round((rss_kb(pid, "VmHWM") - before) / 1024, 1), "files_left": left}


def summary(outcome) -> str:
    if isinstance(outcome, list):
        return ", ".join(f"{n}x {code}" for code, n in sorted(Counter(map(str, outcome)).items()))
    return f"{outcome['status']} after the client sent {outcome['client_sent_mb']} MB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", help="default $PETLAB_REGISTRY_DIR or models/registry")
    parser.add_argument("--task", default="cats_vs_dogs")
    parser.add_argument("--chunked-mb", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = parser.parse_args(argv)
    registry = Registry(args.registry)
    if not registry.production(args.task):
        print(f"error: no production {args.task} model in {registry.root}; run "
              f"`python experiments/promote.py --task {args.task}` first", file=sys.stderr)
        return 2
    validation = shared_data() / "cats_and_dogs_filtered" / "validation"
    photos = sorted((validation / "dogs").glob("*.jpg"))[:32] + sorted((validation / "cats").glob("*.jpg"))[:32]
    if len(photos) < 64:
        print(f"error: 64 ordinary photos expected under {validation}; set PETLAB_DATA_DIR", file=sys.stderr)
        return 2
    ordinary = [(p.name, p.read_bytes()) for p in photos]
    huge_png, big_png, eps_file = png(8000), png(6000), eps()
    total = args.chunked_mb * 2**20
    cases = {
        f"chunked {args.chunked_mb} MB body to /api/predict":
            lambda: post_chunked(url, "/api/predict", "file", total),
        f"chunked {args.chunked_mb} MB body to /gradio_api/upload":
            lambda: post_chunked(url, "/gradio_api/upload", "files", total),
        f"10 concurrent 8000x8000 RGBA PNGs ({len(huge_png) // 1024} KB each)":
            lambda: post_photos(url, args.task, [("huge.png", huge_png)] * 10, 10),
        f"10 concurrent 6000x6000 RGBA PNGs ({len(big_png) // 1024} KB each)":
            lambda: post_photos(url, args.task, [("big.png", big_png)] * 10, 10),
        "an EPS file": lambda: post_photos(url, args.task, [("photo.eps", eps_file)], 1),
        "64 concurrent ordinary photos": lambda: post_photos(url, args.task, ordinary, 64),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        uploads = Path(tmp) / "gradio"
        uploads.mkdir()
        env = {**os.environ, "GRADIO_TEMP_DIR": str(uploads)}
        with demo_server(registry.root, Path(tmp) / "demo.log", env=env) as (url, proc):
            post_photos(url, args.task, ordinary[:4], 1)  # warm: the first requests load what they need
            baseline_mb = round(rss_kb(proc.pid, "VmRSS") / 1024, 1)
            for name, send in cases.items():
                results[name] = measure(proc.pid, uploads, send)
                if not args.json:
                    r = results[name]
                    print(f"{name}: {summary(r['outcome'])}; {r['wall_s']} s; peak RSS +{r['peak_rss_growth_mb']} MB"
                          + (f"; LEFT ON DISK: {r['files_left']}" if r["files_left"] else ""), flush=True)
            after = httpx.post(f"{url}/api/predict", files={"file": ordinary[0]}, data={"task": args.task}, timeout=60)
            alive = {"status": after.status_code, "top": after.json()["predictions"][0]["label"]
                     if after.status_code == 200 else after.text[:200], "server_running": proc.poll() is None}
    report = {"machine": machine(torch.device("cpu")), "server_rss_mb_after_warmup": baseline_mb, "cases": results,
              "afterwards": alive}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"afterwards: an ordinary photo -> {alive['status']} ({alive['top']}); server running: "
              f"{alive['server_running']}; server RSS after warm-up {baseline_mb} MB; CPU {report['machine']['cpu']}")
    worst = max(r["peak_rss_growth_mb"] for r in results.values())
    ok = alive["status"] == 200 and worst < 1024 and not any(r["files_left"] for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

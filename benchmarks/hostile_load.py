"""What hostile requests cost a real demo server: responses, wall time and the server's peak RSS growth.

    python benchmarks/hostile_load.py [--registry DIR] [--task cats_vs_dogs] [--json]

Starts the demo (demo/app.py, its own process, 127.0.0.1) on the registry's production model and
sends, one case at a time:
- a chunked 200 MB body (no Content-Length) to /api/predict, and one to Gradio's /gradio_api/upload;
- ten concurrent 8000 x 8000 RGBA PNGs (265 KB each; 256 MB each once decoded);
- ten concurrent 6000 x 6000 RGBA PNGs (36 MP: under the serving pixel limit, so they are decoded);
- ten concurrent 6300 x 6300 16-bit grayscale PNGs, palette PNGs with transparency, and GIFs (tens
  of KB each; once converted at full size, through float64 for the 16-bit ones);
- an EPS file (Pillow would hand it to Ghostscript);
- 64 concurrent ordinary photos;
- four hostile clients sending 16-bit PNGs back to back beside one ordinary client, whose latency
  (p50, p90) is the figure: a hostile flood must not starve ordinary requests;
- the file-read attempt: POST /gradio_api/call/classify naming /etc/hostname (once copied into the
  upload cache and served back); and Gradio's URL proxy;
- the upload-cache fill: 300 uploads of 2 MB (600 MB) to /gradio_api/upload, and the folder's size after;
- round three: a 91-byte 2047 x 1 PNG (alone, three and ten at once, 16 in one request, and through the
  page's classify and heatmap), a 1 MB progressive 4:4:4 JPEG of 9450 x 9450 (alone, four and ten at once),
  2,500 queue joins with nobody listening followed by the page's own call (answered how long after), 100
  joins carrying 8 MB of event_data or a 4 MB session_hash, every route form that could fetch a URL (aimed
  at a local HTTP server that records fetches), and a registry copy whose .pt2 files carry a shell command
  in their guards_code.
For each it prints the status codes, the wall time, the p50 of an ordinary client sending photos one at a
time beside the case, and the server's peak RSS over its RSS just
before the case (the kernel's high-water mark, reset per case through /proc/PID/clear_refs). Then
it checks that the server is still up and answers an ordinary photo. The upload folder Gradio uses
(GRADIO_TEMP_DIR, a temporary one here) is listed after each case: nothing may be left behind.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from common import demo_server, recording_http_server, shared_data  # benchmarks/common.py (this folder)
from PIL import Image

from petlab.engine.speed import machine
from petlab.registry import Registry

CHUNK = 64 * 1024
FILL = "the upload-cache fill: 300 uploads of 2 MB to /gradio_api/upload"
PAGE_THIN = "the page's classify and heatmap of a 2047x1 PNG"
FLOOD = "2,500 queue joins of a 36 MP PNG, nobody listening, then the page's own call"
# cases that upload as the page does: what they leave is the upload folder's, bounded by its budget
THROUGH_THE_PAGE = {FILL, PAGE_THIN, FLOOD}
CRAFTED = "a model.pt2 and pet_view.pt2 with a shell command in guards_code, the ONNX files removed"


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (40, 160, 90, 128)).save(buffer, "PNG")
    return buffer.getvalue()


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kw)
    return buffer.getvalue()


def odd_mode_bombs(side: int = 6300) -> dict[str, bytes]:
    """Small files that decode to large images in the modes the generic path once converted at full size."""
    palette = Image.new("P", (side, side), 1)
    palette.putpalette([255, 0, 0, 0, 255, 0] * 128)
    sixteen = np.zeros((side, side), np.uint16)
    sixteen[::7] = 60000
    return {"16-bit grayscale PNGs": encoded(Image.fromarray(sixteen), "PNG"),
            "palette PNGs with transparency": encoded(palette, "PNG", transparency=0),
            "GIFs": encoded(palette, "GIF")}


def hostile_beside_ordinary(url: str, task: str, hostile: bytes, ordinary: list, seconds: float = 20.0) -> dict:
    """Four clients send `hostile` back to back while one ordinary client sends its photos one at a time."""
    stop = time.monotonic() + seconds
    hostile_codes: list = []

    def flood():
        with httpx.Client(timeout=300) as client:
            while time.monotonic() < stop:
                try:
                    hostile_codes.append(client.post(f"{url}/api/predict", files={"file": ("h.png", hostile)},
                                                     data={"task": task}).status_code)
                except httpx.HTTPError as exc:
                    hostile_codes.append(type(exc).__name__)

    latencies, codes = [], []
    with ThreadPoolExecutor(4) as pool:
        floods = [pool.submit(flood) for _ in range(4)]
        time.sleep(1.0)  # the flood is under way
        with httpx.Client(timeout=300) as client:
            for name, data in itertools.cycle(ordinary):
                if time.monotonic() >= stop:
                    break
                start = time.perf_counter()
                codes.append(client.post(f"{url}/api/predict", files={"file": (name, data)},
                                         data={"task": task}).status_code)
                latencies.append(time.perf_counter() - start)
        for f in floods:
            f.result()
    return {"ordinary": dict(Counter(codes)), "hostile": dict(Counter(map(str, hostile_codes))),
            "ordinary_p50_s": round(statistics.median(latencies), 3),
            "ordinary_p90_s": round(statistics.quantiles(latencies, n=10)[-1], 3) if len(latencies) > 1 else None}


def file_read_attempt(url: str, uploads: Path) -> dict:
    """The reported request, and Gradio's URL proxy; whether a copy reached the upload folder."""
    event = httpx.post(f"{url}/gradio_api/call/classify", timeout=30, json={"data": [
        {"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, "cats_vs_dogs"]})
    answered = event.status_code == 200 and "event: error" not in httpx.get(
        f"{url}/gradio_api/call/classify/{event.json()['event_id']}", timeout=60).text
    proxy = httpx.get(f"{url}/gradio_api/file=https://example.com/cat.png", timeout=30).status_code
    copied = [p.name for p in uploads.rglob("hostname")]
    return {"status": "ANSWERED" if answered else "refused", "copies": copied, "url_proxy": proxy}


def url_fetch_attempts(url: str) -> dict:
    """Every route form that could make the server fetch a URL, aimed at a local HTTP server that records
    whether it was asked for anything: Gradio's `file=<URL>`, `file/<URL>`, `proxy=<URL>`, and a FileData whose
    path or url is a URL, joined to the queue and called."""
    with recording_http_server(png(16)) as (target, fetched):
        codes = [httpx.get(f"{url}{route}", timeout=30).status_code for route in
                 (f"/gradio_api/file/{target}/a.png", f"/gradio_api/file={target}/b.png",
                  f"/gradio_api/proxy={target}/c")]
        photo = {"path": f"{target}/d.png", "url": f"{target}/d.png", "meta": {"_type": "gradio.FileData"}}
        for route in ("/gradio_api/queue/join", "/gradio_api/call/classify"):
            codes.append(httpx.post(f"{url}{route}", json={"data": [photo, "cats_vs_dogs"], "fn_index": 0,
                                                           "session_hash": "fetch"}, timeout=30).status_code)
        time.sleep(1.0)
    return {"codes": dict(Counter(codes)), "urls_fetched": len(fetched)}



def page_event(url: str, fn_index: int, data: list, session: str, timeout: float = 60,
               source: str | None = None) -> str:
    """An event called as the page calls it: queue/join, then its event stream until the event completes;
    `source`: the client's own address (another loopback address: another visitor)."""
    transport = httpx.HTTPTransport(local_address=source) if source else None
    with httpx.Client(timeout=timeout, transport=transport) as client:
        joined = client.post(f"{url}/gradio_api/queue/join", json={"data": data, "fn_index": fn_index,
                                                                    "session_hash": session, "event_data": None})
        if joined.status_code != 200:
            return f"{joined.status_code}"
        with client.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}) as sse:
            for line in sse.iter_lines():
                if "process_completed" in line:
                    return "ok" if '"success":true' in line else "error"
    return "no answer"


def page_events(url: str) -> dict[str, int]:
    """fn_index of the page's classify and of its heatmap event (inputs photo, task and the checkbox)."""
    config = httpx.get(f"{url}/config", timeout=30).json()
    kinds = {c["id"]: c["type"] for c in config["components"]}
    found = {}
    for index, dep in enumerate(config["dependencies"]):
        inputs = [kinds.get(i) for i in dep["inputs"]]
        if dep.get("api_name") == "classify":
            found["classify"] = index
        elif inputs[:1] == ["image"] and "checkbox" in inputs:
            found.setdefault("heatmap", index)
    return found


def uploaded(url: str, name: str, data: bytes) -> dict:
    response = httpx.post(f"{url}/gradio_api/upload", files={"files": (name, data)}, timeout=60)
    response.raise_for_status()
    return {"path": response.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def queue_flood(url: str, photo: bytes, ordinary: bytes, joins: int = 2500) -> dict:
    """`joins` POST /gradio_api/queue/join of a costly `photo`, each a fresh session_hash with nobody listening
    (about 2,100 once stopped the page's queue for good), then a visitor's own call with an `ordinary` photo,
    from another address: how long after the flood it is answered."""
    events = page_events(url)
    data = [uploaded(url, "slow.png", photo), "cats_vs_dogs"]
    honest = [uploaded(url, "cat.jpg", ordinary), "cats_vs_dogs"]
    codes = Counter()

    def flood(offset):
        with httpx.Client(timeout=30) as client:
            for i in range(offset, joins, 4):
                codes[client.post(f"{url}/gradio_api/queue/join", json={
                    "data": data, "fn_index": events["classify"], "session_hash": f"flood{i}",
                    "event_data": None}).status_code] += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(flood, range(4)))
    flood_s = time.perf_counter() - start
    ended = time.perf_counter()
    outcome = "not tried"
    while time.perf_counter() - ended < 30:  # a visitor at another address (127.0.0.2) uses the page
        outcome = page_event(url, events["classify"], honest, f"honest{time.monotonic_ns()}", source="127.0.0.2")
        if outcome == "ok":
            break
        time.sleep(0.1)
    return {"joins": dict(Counter({str(k): v for k, v in codes.items()})), "flood_s": round(flood_s, 2),
            "honest_call": outcome, "answered_s_after_flood": round(time.perf_counter() - ended, 2)}


def queue_payload_floods(url: str, field: str, size: int, count: int = 100) -> dict:
    """`count` joins carrying `size` bytes in `field` (event_data or session_hash), 10 at a time."""
    events = page_events(url)
    blob = "x" * size
    body = {"data": [None, "cats_vs_dogs"], "fn_index": events["classify"], "session_hash": "payload",
            "event_data": None, field: {"blob": blob} if field == "event_data" else blob}

    def one(_):
        try:
            return httpx.post(f"{url}/gradio_api/queue/join", json=body, timeout=60).status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(10) as pool:
        return {"codes": dict(Counter(map(str, pool.map(one, range(count)))))}


def page_with_heatmap(url: str, photo: bytes, name: str, concurrency: int) -> dict:
    """The page's two calls for a photo (its classify, then its heatmap), for `concurrency` sessions at once."""
    events = page_events(url)
    data = [uploaded(url, name, photo), "cats_vs_dogs"]

    def one(i):
        first = page_event(url, events["classify"], data, f"page{i}{time.monotonic_ns()}")
        return first, page_event(url, events["heatmap"], [*data, True], f"heat{i}{time.monotonic_ns()}")

    with ThreadPoolExecutor(concurrency) as pool:
        return {"answers": dict(Counter(map(str, pool.map(one, range(concurrency)))))}


def crafted_export_case(registry_root: Path) -> dict:
    """A copy of the registry whose version has no ONNX file and whose model.pt2 and pet_view.pt2 carry a shell
    command in their guards_code (torch.export.load exec()s it): the server's loading, /api/health, and
    predict.py --registry, each checked for the command having run."""
    import shutil
    import subprocess
    import zipfile

    from petlab.serving import ServedModels, ServingError

    logging.getLogger("petlab.serving").setLevel(logging.CRITICAL)  # its refusal's trace is expected here
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "registry"
        shutil.copytree(registry_root, copy)
        production = Registry(copy).production("cats_vs_dogs")
        version = copy / "cats_vs_dogs" / f"v{production['version']}"
        marker = Path(tmp) / "payload-ran"
        for name in ("model.pt2", "pet_view.pt2"):
            if not (version / name).exists():
                continue
            with zipfile.ZipFile(version / name) as source:
                members = [(info, source.read(info.filename)) for info in source.infolist()]
            with zipfile.ZipFile(version / name, "w") as out:
                for info, data in members:
                    if info.filename.endswith("models/model.json"):
                        program = json.loads(data)
                        program["guards_code"] = [f"__import__('os').system('touch {marker}') == 0 or True"]
                        data = json.dumps(program).encode()
                    out.writestr(info, data)
        for onnx in version.glob("*.onnx"):
            if onnx.name != "imagenet_view.onnx":
                onnx.unlink()
        models = ServedModels(Registry(copy))
        try:
            models.model("cats_vs_dogs")
            served = "SERVED"
        except ServingError as err:
            served = f"{err.status} {err.code}"
        health = models.health()["models"]["cats_vs_dogs"]
        photo = next((version / "examples").iterdir())
        predict = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "experiments/predict.py"),
                                  "--registry", str(copy), "--task", "cats_vs_dogs", str(photo)],
                                 capture_output=True, text=True, timeout=300)
        return {"server": served, "health_format": health["format"], "predict_exit": predict.returncode,
                "code_ran": marker.exists()}


def fill_upload_cache(url: str, uploads: Path, count: int = 300, size: int = 2 * 2**20) -> dict:
    """Uploads past the folder's budget; what the folder holds after, less what was there before (the page's
    example photos, kept and not counted)."""
    before = {p for p in uploads.rglob("*") if p.is_file()}
    with httpx.Client(timeout=60) as client:
        codes = [client.post(f"{url}/gradio_api/upload", files={"files": (f"fill{i}.jpg", os.urandom(size))}
                             ).status_code for i in range(count)]
    held = [p for p in uploads.rglob("*") if p.is_file() and p not in before]
    return {"uploads": dict(Counter(codes)), "sent_mb": count * size // 2**20,
            "folder_mb": round(sum(p.stat().st_size for p in held) / 2**20, 1), "folder_files": len(held)}


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


def post_photos(url: str, task: str, files: list[tuple[str, bytes]], concurrency: int, per_request: int = 1) -> list:
    def one(item):
        name, data = item
        try:
            return httpx.post(f"{url}/api/predict", files=[("file", (name, data))] * per_request, data={"task": task},
                              timeout=300).status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, files))


def measure(pid: int, upload_dir: Path, send, url: str, task: str, ordinary: list) -> dict:
    """Run one case, with an ordinary client beside it sending photos one at a time; the server's peak RSS over
    its RSS before the case, the ordinary client's p50, and what is left in the upload folder."""
    import threading

    before_files = {p for p in upload_dir.rglob("*") if p.is_file()}
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = rss_kb(pid, "VmRSS")
    done, latencies = threading.Event(), []

    def ordinary_client():
        with httpx.Client(timeout=300) as client:
            for name, data in itertools.cycle(ordinary):
                if done.is_set():
                    return
                start = time.perf_counter()
                response = client.post(f"{url}/api/predict", files={"file": (name, data)}, data={"task": task})
                latencies.append((time.perf_counter() - start, response.status_code))

    beside = threading.Thread(target=ordinary_client, daemon=True)
    start = time.perf_counter()
    beside.start()
    outcome = send()
    wall = time.perf_counter() - start
    done.set()
    beside.join()
    left = sorted(str(p.relative_to(upload_dir)) for p in upload_dir.rglob("*")
                  if p.is_file() and p not in before_files)
    seconds = [t for t, code in latencies if code == 200]
    return {"outcome": outcome, "wall_s": round(wall, 2),
            "peak_rss_growth_mb": round((rss_kb(pid, "VmHWM") - before) / 1024, 1), "files_left": left,
            "ordinary_beside": {"answered": len(seconds), "failed": len(latencies) - len(seconds),
                                "p50_s": round(statistics.median(seconds), 3) if seconds else None}}


def summary(outcome) -> str:
    if isinstance(outcome, dict) and "ordinary_p50_s" in outcome:
        return (f"ordinary {outcome['ordinary']}, p50 {outcome['ordinary_p50_s']} s, p90 {outcome['ordinary_p90_s']}"
                f" s; hostile {outcome['hostile']}")
    if isinstance(outcome, dict) and "copies" in outcome:
        return (f"{outcome['status']}, {len(outcome['copies'])} copies in the upload folder; URL proxy "
                f"{outcome['url_proxy']}")
    if isinstance(outcome, dict) and "folder_mb" in outcome:
        return (f"{outcome['uploads']} for {outcome['sent_mb']} MB; the folder holds {outcome['folder_mb']} MB in "
                f"{outcome['folder_files']} files")
    if isinstance(outcome, list):
        return ", ".join(f"{n}x {code}" for code, n in sorted(Counter(map(str, outcome)).items()))
    if isinstance(outcome, dict) and "client_sent_mb" in outcome:
        return f"{outcome['status']} after the client sent {outcome['client_sent_mb']} MB"
    return ", ".join(f"{k} {v}" for k, v in outcome.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", help="default $PETLAB_REGISTRY_DIR or models/registry")
    parser.add_argument("--task", default="cats_vs_dogs")
    parser.add_argument("--chunked-mb", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument("--cases", nargs="+", metavar="TEXT",
                        help="run only the cases whose name holds one of these (e.g. 2047x1 guards_code)")
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
    huge_png, big_png, eps_file, bombs = png(8000), png(6000), eps(), odd_mode_bombs()
    thin = encoded(Image.new("RGB", (2047, 1), (200, 10, 10)), "PNG")  # 91 bytes: once a 524,032 x 255 resize
    progressive = encoded(Image.new("RGB", (9450, 9450), (90, 140, 60)), "JPEG", progressive=True, subsampling=0,
                          quality=95)  # about 1 MB: once 520 MB of coefficients, after draft() made it look small
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
        **{f"10 concurrent 6300x6300 {name} ({len(data) // 1024} KB each)":
           (lambda data=data: post_photos(url, args.task, [("odd.png", data)] * 10, 10))
           for name, data in bombs.items()},
        "an EPS file": lambda: post_photos(url, args.task, [("photo.eps", eps_file)], 1),
        "64 concurrent ordinary photos": lambda: post_photos(url, args.task, ordinary, 64),
        "4 hostile clients (16-bit PNGs) beside 1 ordinary client, 20 s":
            lambda: hostile_beside_ordinary(url, args.task, bombs["16-bit grayscale PNGs"], ordinary),
        "the file-read attempt (/gradio_api/call/classify naming /etc/hostname)":
            lambda: file_read_attempt(url, uploads),
        f"a {len(thin)}-byte 2047x1 PNG": lambda: post_photos(url, args.task, [("thin.png", thin)], 1),
        "three 2047x1 PNGs at once": lambda: post_photos(url, args.task, [("thin.png", thin)] * 3, 3),
        "ten 2047x1 PNGs at once": lambda: post_photos(url, args.task, [("thin.png", thin)] * 10, 10),
        "16 2047x1 PNGs in one request": lambda: post_photos(url, args.task, [("thin.png", thin)], 1, 16),
        PAGE_THIN: lambda: page_with_heatmap(url, thin, "thin.png", 1),
        f"a {len(progressive) // 1024} KB progressive 4:4:4 JPEG of 9450x9450":
            lambda: post_photos(url, args.task, [("p.jpg", progressive)], 1),
        "four such JPEGs at once": lambda: post_photos(url, args.task, [("p.jpg", progressive)] * 4, 4),
        "ten such JPEGs at once": lambda: post_photos(url, args.task, [("p.jpg", progressive)] * 10, 10),
        FLOOD:
            lambda: queue_flood(url, big_png, ordinary[0][1]),
        "100 joins with 8 MB of event_data, 10 at a time": lambda: queue_payload_floods(url, "event_data", 8 * 2**20),
        "100 joins with a 4 MB session_hash, 10 at a time":
            lambda: queue_payload_floods(url, "session_hash", 4 * 2**20),
        "URL fetches: file/<URL>, file=<URL>, proxy=<URL>, a FileData naming a URL": lambda: url_fetch_attempts(url),
        FILL: lambda: fill_upload_cache(url, uploads),  # last: the files it leaves are the cache's, bounded
    }
    if args.cases:
        cases = {name: send for name, send in cases.items() if any(text in name for text in args.cases)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        uploads = Path(tmp) / "gradio"
        uploads.mkdir()
        env = {**os.environ, "GRADIO_TEMP_DIR": str(uploads)}
        with demo_server(registry.root, Path(tmp) / "demo.log", env=env) as (url, proc):
            post_photos(url, args.task, ordinary[:4], 1)  # warm: the first requests load what they need
            baseline_mb = round(rss_kb(proc.pid, "VmRSS") / 1024, 1)
            for name, send in cases.items():
                results[name] = measure(proc.pid, uploads, send, url, args.task, ordinary)
                if not args.json:
                    r = results[name]
                    left = r["files_left"] if name not in THROUGH_THE_PAGE else []
                    print(f"{name}: {summary(r['outcome'])}; {r['wall_s']} s; peak RSS +{r['peak_rss_growth_mb']} MB"
                          f"; ordinary photos beside it: p50 {r['ordinary_beside']['p50_s']} s"
                          + (f"; LEFT ON DISK: {left}" if left else ""), flush=True)
            if not args.cases or any(text in CRAFTED for text in args.cases):
                results[CRAFTED] = {"outcome": crafted_export_case(registry.root), "wall_s": None,
                                    "peak_rss_growth_mb": 0.0, "files_left": [], "ordinary_beside": {}}
                if not args.json:
                    print(f"{CRAFTED}: {summary(results[CRAFTED]['outcome'])}", flush=True)
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

    def outcome_with(key: str) -> dict:  # the outcome of the case that reports `key` ({} where it did not run)
        return next((r["outcome"] for r in results.values() if isinstance(r["outcome"], dict)
                     and key in r["outcome"]), {})

    flood, read = outcome_with("ordinary_p50_s"), outcome_with("copies")
    joins, fetches, crafted = outcome_with("answered_s_after_flood"), outcome_with("urls_fetched"), \
        outcome_with("code_ran")
    fill = results.get(FILL, {}).get("outcome", {})
    beside = [r["ordinary_beside"]["p50_s"] for r in results.values() if r["ordinary_beside"].get("p50_s")]
    ok = (alive["status"] == 200 and worst < 1024 and flood.get("ordinary_p50_s", 0) < 2.0
          and read.get("status", "refused") == "refused" and not read.get("copies")
          and fill.get("folder_mb", 0) <= 256
          and joins.get("honest_call", "ok") == "ok" and joins.get("answered_s_after_flood", 0) < 2.0
          and not fetches.get("urls_fetched") and not crafted.get("code_ran") and max(beside, default=0) < 2.0
          and not any(r["files_left"] for name, r in results.items() if name not in THROUGH_THE_PAGE))
    if not args.json:
        print(f"worst peak RSS growth +{worst} MB; slowest ordinary p50 beside a case {max(beside, default=0)} s; "
              f"{'all bounds held' if ok else 'A BOUND FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

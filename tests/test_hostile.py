"""What a stranger may send the public demo, and what a crafted file may hold: each refused cheaply, nothing left.

A real server on 127.0.0.1 (1 MB upload limit, Gradio's uploads in a folder of the test's own, kept
2 s), raw HTTP where a well-behaved client would hide the attack (chunked bodies), and the real
scripts on a real run whose checkpoint has been swapped for a pickle that runs code.
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from PIL import Image

from tests.runs import REPO, script
from tests.servers import demo_server, recording_http_server, route_table

LIMIT_MB = 1
LIMIT = LIMIT_MB * 2**20 + 64 * 1024  # demo/app.py's MULTIPART_OVERHEAD on top of the file limit
CACHE_MB, CACHE_FILES = 2, 12  # the upload folder's budget (the page's example photos come on top)


@pytest.fixture(scope="module")
def hostile_server(promoted_registry, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    uploads = folder / "gradio"
    uploads.mkdir()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(uploads)}
    with demo_server(promoted_registry, folder / "demo.log", "--max-upload-mb", str(LIMIT_MB),
                     "--upload-ttl-s", "2", "--upload-cache-mb", str(CACHE_MB), "--upload-cache-files",
                     str(CACHE_FILES), env=env) as (url, proc):
        SERVER_PIDS[url] = proc.pid
        yield url, folder / "demo.log", uploads


SERVER_PIDS: dict[str, int] = {}  # hostile_server's URL -> its process, to read its memory


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) / 1024


def files_in(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def rgba_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (40, 160, 90, 128)).save(buffer, "PNG")
    return buffer.getvalue()


def chunked(total: int, field: str, sent: list[int]):
    yield (f'--b\r\nContent-Disposition: form-data; name="{field}"; filename="x.jpg"\r\n'
           "Content-Type: image/jpeg\r\n\r\n").encode()
    while sent[0] < total:
        size = min(65536, total - sent[0])
        sent[0] += size
        yield b"\xff" * size
    yield b"\r\n--b--\r\n"


def ordinary_photo_is_served(url: str, shared: Path) -> bool:
    photo = (shared / "cats_and_dogs_filtered/validation/dogs/dog.2001.jpg").read_bytes()
    response = httpx.post(f"{url}/api/predict", files={"file": ("dog.jpg", photo)}, timeout=60)
    return response.status_code == 200 and response.json()["predictions"][0]["label"] == "dog"


@pytest.mark.slow
@pytest.mark.parametrize("route, field", [("/api/predict", "file"), ("/gradio_api/upload", "files")])
def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(hostile_server, shared, route, field):
    url, log, uploads = hostile_server
    before = files_in(uploads)
    sent = [0]
    response = httpx.post(f"{url}{route}", content=chunked(40 * 2**20, field, sent), timeout=60,
                          headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert "content-length" not in {k.lower() for k in response.request.headers}  # really chunked
    assert response.status_code == 413 and response.json()["error"] == "too_large", response.text
    assert sent[0] < 40 * 2**20  # refused mid-stream, not after the whole body
    refusals = [json.loads(line.split("petlab.demo: ", 1)[1]) for line in log.read_text().splitlines()
                if '"outcome": "too_large"' in line and f'"route": "{route}"' in line]
    # what the server had read when it refused: past the file limit (Gradio's parser counts the file alone) and
    # at most the body limit plus what uvicorn buffers ahead of the app (its 64 KiB high-water mark and the
    # socket reads in flight), never the 40 MB
    assert refusals and LIMIT_MB * 2**20 < refusals[-1]["body_bytes"] <= LIMIT + 256 * 1024
    assert files_in(uploads) == before  # the part it had begun to spool is gone
    assert ordinary_photo_is_served(url, shared)


@pytest.mark.slow
@pytest.mark.parametrize("route, field", [("/api/predict", "file"), ("/gradio_api/upload", "files")])
def test_a_file_over_the_limit_in_a_body_under_it_gets_the_same_refusal(hostile_server, route, field):
    """The body limit allows for the form's overhead, so here the file limit refuses: the API's own check, or
    Gradio's parser (which answers in plain text, and is answered as ours)."""
    url, _, uploads = hostile_server
    before = files_in(uploads)
    sent = [0]
    response = httpx.post(f"{url}{route}", content=chunked(LIMIT_MB * 2**20 + 4096, field, sent), timeout=60,
                          headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413 and response.json()["error"] == "too_large", response.text
    assert files_in(uploads) == before


@pytest.mark.slow
def test_a_declared_length_over_the_limit_is_refused_unread(hostile_server):
    url, _, uploads = hostile_server
    response = httpx.post(f"{url}/gradio_api/upload", files={"files": ("x.jpg", os.urandom(3 * 2**20))}, timeout=60)
    assert response.status_code == 413 and "byte limit" in response.json()["message"]


@pytest.mark.slow
def test_a_small_png_with_huge_dimensions_is_refused_from_its_header(hostile_server, shared):
    url, _, _ = hostile_server
    png = rgba_png(8000)  # ~260 KB that would be 256 MB decoded (and 1.5 GB through the generic path)
    assert len(png) < LIMIT_MB * 2**20
    start = time.perf_counter()
    response = httpx.post(f"{url}/api/predict", files={"file": ("big.png", png)}, timeout=60)
    assert response.status_code == 400 and response.json()["error"] == "too_large"
    assert "8000x8000" in response.json()["message"]
    assert time.perf_counter() - start < 5  # the header was enough
    assert ordinary_photo_is_served(url, shared)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["EPS", "ICO", "PCX"])
def test_formats_outside_the_allow_list_are_refused_unopened(hostile_server, fmt):
    url, _, _ = hostile_server
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, fmt)  # Pillow itself would read each of these
    assert Image.open(io.BytesIO(buffer.getvalue())).format == fmt
    response = httpx.post(f"{url}/api/predict", files={"file": (f"x.{fmt.lower()}", buffer.getvalue())}, timeout=60)
    assert response.status_code == 400 and response.json()["error"] == "not_an_image"
    assert "JPEG, PNG, WEBP, GIF, BMP, TIFF" in response.json()["message"]


@pytest.mark.slow
def test_gradio_keeps_page_uploads_only_as_long_as_told(hostile_server, shared):
    url, _, uploads = hostile_server
    photo = (shared / "cats_and_dogs_filtered/validation/cats/cat.2001.jpg").read_bytes()
    response = httpx.post(f"{url}/gradio_api/upload", files={"files": ("cat.jpg", photo)}, timeout=60)
    assert response.status_code == 200, response.text
    (stored,) = map(Path, response.json())
    assert stored.is_file() and stored.is_relative_to(uploads)
    deadline = time.monotonic() + 30
    while stored.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not stored.exists()  # --upload-ttl-s 2: deleted by Gradio's delete_cache


def events_taking_files(url: str) -> list[tuple[int, str | None, int]]:
    """(fn_index, api_name, number of inputs) of every event of the page with an image or file input,
    named or not, from the page's own config."""
    config = httpx.get(f"{url}/config", timeout=30).json()
    kinds = {c["id"]: c["type"] for c in config["components"]}
    found = []
    for index, dep in enumerate(config["dependencies"]):
        inputs = [kinds.get(i) for i in dep["inputs"]]
        if {"image", "file", "uploadbutton"} & set(inputs):
            found.append((index, dep.get("api_name") or None, inputs))
    return found


def queue_call(url: str, fn_index: int, data: list, session: str | None = None, source: str | None = None) -> str:
    """Call an event the way the page does (queue/join by fn_index, then its event stream); the stream's text.
    `source`: the client's own address (another loopback address is another visitor)."""
    session = session or f"hostile{fn_index}"
    transport = httpx.HTTPTransport(local_address=source) if source else None
    with httpx.Client(timeout=60, transport=transport) as client:
        joined = client.post(f"{url}/gradio_api/queue/join", json={"data": data, "fn_index": fn_index,
                                                                    "session_hash": session, "event_data": None})
        if joined.status_code != 200:
            return joined.text
        text = ""
        with client.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}) as sse:
            for line in sse.iter_lines():
                text += line + "\n"
                if "process_completed" in line:
                    break
    return text


def join(url: str, payload: dict) -> httpx.Response:
    return httpx.post(f"{url}/gradio_api/queue/join", json=payload, timeout=30)


@pytest.fixture
def local_http():
    """A real HTTP server on 127.0.0.1 that records every path it is asked for: whether the demo fetched a URL."""
    with recording_http_server(rgba_png(16)) as (listener, fetched):
        yield listener, fetched


@pytest.mark.slow
def test_no_event_copies_a_file_of_the_server_into_the_upload_folder(hostile_server, shared, tmp_path):
    """The reported request (POST /gradio_api/call/classify naming /etc/hostname) once copied the file into the
    upload cache and named the copy; and every other event with a file input, named or not, called as the page
    calls it. A secret, a photo elsewhere on the disk, and /proc/self/environ are refused before Gradio reads
    the body, and stay where they are."""
    url, _, uploads = hostile_server
    secret = tmp_path / "secret.jpg"
    secret.write_text("TOPSECRET-petlab")
    photo = shared / "cats_and_dogs_filtered/validation/cats/cat.2001.jpg"
    before = files_in(uploads)
    reported = httpx.post(f"{url}/gradio_api/call/classify", json={"data": [
        {"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, "cats_vs_dogs"]}, timeout=30)
    assert reported.status_code == 422 and "uploaded first" in reported.json()["message"], reported.text
    events = events_taking_files(url)
    assert len(events) >= 2, events  # classify, and the task change's .then(on_image)
    for fn_index, _, inputs in events:
        for target in (secret, photo, Path("/proc/self/environ")):
            data = [{"path": str(target), "meta": {"_type": "gradio.FileData"}} if kind == "image"
                    else "cats_vs_dogs" for kind in inputs]
            refused = join(url, {"data": data, "fn_index": fn_index, "session_hash": f"h{fn_index}",
                                 "event_data": None})
            assert refused.status_code == 422, refused.text
            assert "TOPSECRET" not in refused.text and str(target) not in refused.text
    assert not {p for p in files_in(uploads) - before if p.name in ("hostname", "secret.jpg", "environ",
                                                                   photo.name)}
    for path in ("/etc/hostname", str(secret)):  # and the file route serves none of them
        assert httpx.get(f"{url}/gradio_api/file={path}", timeout=30).status_code == 404


@pytest.mark.slow
def test_a_data_url_or_a_url_as_a_photo_is_refused_before_gradio_reads_it(hostile_server, local_http):
    """A data: URL was once decoded into the upload folder; a FileData whose path is a URL makes Gradio download
    it before any check of petlab's runs. Both are refused at the queue's door: nothing is fetched or written."""
    url, _, uploads = hostile_server
    listener, fetched = local_http
    before = files_in(uploads)
    data_url = "data:image/png;base64," + __import__("base64").b64encode(rgba_png(64)).decode()
    fn_index = events_taking_files(url)[0][0]
    for photo in ({"url": data_url, "path": "x.png", "meta": {"_type": "gradio.FileData"}},
                  {"path": f"{listener}/cat.png", "meta": {"_type": "gradio.FileData"}},
                  {"path": f"{listener}/cat.png", "url": f"{listener}/cat.png", "is_stream": True,
                   "meta": {"_type": "gradio.FileData"}}):
        for route in ("/gradio_api/queue/join", "/gradio_api/call/classify"):
            response = httpx.post(f"{url}{route}", json={"data": [photo, "cats_vs_dogs"], "fn_index": fn_index,
                                                          "session_hash": "durl"}, timeout=30)
            assert response.status_code == 422, response.text
    time.sleep(1)
    assert files_in(uploads) == before and fetched == []


@pytest.mark.slow
def test_no_route_makes_the_server_fetch_a_url(hostile_server, local_http):
    """Gradio's URL proxy in every form it answers: `file=<URL>`, `proxy=<URL>`, and the older `file/<URL>`
    (which once fetched public and carrier-grade NAT addresses for anyone)."""
    url, _, _ = hostile_server
    listener, fetched = local_http
    for route in (f"/gradio_api/file={listener}/a.png", f"/gradio_api/file/{listener}/b.png",
                  f"/gradio_api/proxy={listener}/c.png", f"/gradio_api/file={listener.replace('http', 'HTTP')}/d.png",
                  "/gradio_api/file=https://example.com/cat.png", "/gradio_api/proxy=https://example.com/x"):
        for method in ("GET", "HEAD"):
            response = httpx.request(method, f"{url}{route}", timeout=30)
            assert response.status_code == 404, (route, response.status_code)
    assert fetched == []


@pytest.mark.slow
def test_an_upload_request_with_many_files_is_refused_and_leaves_nothing(hostile_server):
    """Gradio's upload route takes up to 1,000 files a request; one 102 KB request once wrote 1,000 files."""
    url, _, uploads = hostile_server
    before = files_in(uploads)
    files = [("files", (f"x{i}.jpg", b"\xff" * 100)) for i in range(1000)]
    response = httpx.post(f"{url}/gradio_api/upload", files=files, timeout=60)
    assert response.status_code == 413 and response.json()["error"] == "too_many_files", response.text
    assert files_in(uploads) - before == set()


@pytest.mark.slow
def test_the_upload_folder_stays_within_its_budget_and_keeps_the_newest(hostile_server):
    """600 MB in 4.9 s once stayed for an hour: now the oldest uploads go first, past the folder's budget."""
    url, _, uploads = hostile_server
    examples = {p for p in files_in(uploads) if p.name.startswith(("cat-", "dog-"))}
    last = None
    for i in range(40):  # 40 x 300 KB: 12 MB, six times the budget
        response = httpx.post(f"{url}/gradio_api/upload", files={"files": (f"fill{i}.jpg", os.urandom(300_000))},
                              timeout=30)
        assert response.status_code == 200, response.text
        (last,) = map(Path, response.json())
        uploaded = files_in(uploads) - examples
        assert len(uploaded) <= CACHE_FILES and sum(p.stat().st_size for p in uploaded) <= CACHE_MB * 2**20
    assert last.is_file()  # the newest upload survives the eviction it caused
    assert examples <= files_in(uploads)  # the page's example photos are never evicted


KNOWN_ROUTES = REPO / "tests" / "public_routes.txt"  # "answered|refused METHOD TEMPLATE", one route a line
SAMPLE_PARAMS = {"session_hash": "s3ss10n", "event_id": "e1", "api_name": "classify", "task": "cats_vs_dogs",
                 "name": "reliability.png", "url_path": "http://127.0.0.1:9/x.png", "path_or_url": "{example}",
                 "path": "index.js", "size": "192", "key": "k", "id": "1", "environment": "prod", "type": "js",
                 "file_name": "x.js", "run": "1", "component_id": "1", "segment_id": "1", "ext": "ts",
                 "endpoint": "e", "record_id": "r", "asset_id": "a"}


def sample_path(template: str, example: Path) -> str:
    """A concrete path for a route template ({param} and {param:path} filled in)."""
    filled = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: SAMPLE_PARAMS[m.group(1)], template)
    return filled.replace("{example}", str(example))


@pytest.mark.slow
def test_every_route_of_the_app_is_listed_and_only_the_listed_ones_answer(hostile_server, promoted_registry):
    """The app's whole route table (Gradio's, mounted, and the API's) against tests/public_routes.txt: a route
    Gradio adds in an upgrade fails here until someone decides it. Each route the list refuses answers 404 on
    the real server, and each it answers is one of petlab.public_server.PUBLIC_ROUTES."""
    import sys

    from petlab.public_server import allowed_route

    sys.path.insert(0, str(REPO / "demo"))
    from app import create_app

    url, _, _ = hostile_server
    table = route_table(create_app(promoted_registry).routes)
    known = {(method, template): verdict for verdict, method, template in
             (line.split(" ", 2) for line in KNOWN_ROUTES.read_text().splitlines() if line.strip())}
    assert set(table) == set(known), (f"routes not in {KNOWN_ROUTES.name}: {sorted(set(table) - set(known))}; "
                                      f"listed but gone: {sorted(set(known) - set(table))}")
    example = next((promoted_registry.resolve() / "cats_vs_dogs" / "v1" / "examples").iterdir())
    for (method, template), verdict in sorted(known.items()):
        path = sample_path(template, example)
        assert allowed_route(method, path) == (verdict == "answered"), (verdict, method, template)
        if verdict == "refused":
            response = httpx.request(method, f"{url}{path}", timeout=30)
            assert response.status_code == 404, (method, template, response.status_code)
    websocket = httpx.get(f"{url}/gradio_api/queue/join", headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, timeout=30)
    assert websocket.status_code in (403, 404, 405), websocket.status_code  # never 101


def upload(url: str, data: bytes, name: str = "cat.jpg") -> dict:
    """A photo through Gradio's upload route, as the page sends it; the FileData the page would then join with."""
    response = httpx.post(f"{url}/gradio_api/upload", files={"files": (name, data)}, timeout=60)
    assert response.status_code == 200, response.text
    (path,) = response.json()
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def classify_fn_index(url: str) -> int:
    return next(i for i, name, _ in events_taking_files(url) if name == "classify")


@pytest.mark.slow
def test_a_flood_of_queue_joins_is_refused_while_it_lasts_and_the_page_answers_after_it(hostile_server, shared):
    """About 2,100 joins with fresh session hashes, nobody listening, once pushed Gradio's 2,000-session LRU past
    its end: its queue died ("Queue is stopped") until a restart. 2,500 joins here, then the page's own call."""
    url, log, _ = hostile_server
    cat = (shared / "cats_and_dogs_filtered/validation/cats/cat.2001.jpg").read_bytes()
    fn_index = classify_fn_index(url)
    codes = Counter()
    with httpx.Client(timeout=30) as client:
        for i in range(2500):
            if i % 100 == 0:  # this server deletes uploads after 2 s (--upload-ttl-s 2)
                photo = upload(url, cat)
            codes[client.post(f"{url}/gradio_api/queue/join", json={
                "data": [photo, "cats_vs_dogs"], "fn_index": fn_index, "session_hash": f"flood{i}",
                "event_data": None}).status_code] += 1
    assert set(codes) <= {200, 429, 503} and codes[429] + codes[503] > 0, codes  # bounded while it lasted
    deadline = time.monotonic() + 60  # the flood's accepted events drain; then the page's own call answers
    photo = upload(url, cat)
    while True:
        text = queue_call(url, fn_index, [photo, "cats_vs_dogs"], session=f"honest{time.monotonic_ns()}",
                          source="127.0.0.2")  # a visitor at another address
        if '"success":true' in text or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert '"success":true' in text and "confidences" in text, text
    assert "Queue is stopped" not in text and "Task exception was never retrieved" not in log.read_text()


@pytest.mark.slow
def test_what_a_client_sends_to_the_queue_is_bounded_before_gradio_stores_it(hostile_server, shared):
    """100 joins of 8 MB event_data once took the server from 196 to 1,788 MB, and 4 MB session hashes stayed
    after the queue emptied. Each is refused at the door; the server's memory does not move."""
    url, _, _ = hostile_server
    pid = SERVER_PIDS[url]
    photo = upload(url, (shared / "cats_and_dogs_filtered/validation/cats/cat.2001.jpg").read_bytes())
    fn_index = classify_fn_index(url)
    before = rss_mb(pid)
    big = "x" * (8 * 2**20)
    for payload, status in ((dict(event_data={"blob": big}), 413), (dict(session_hash="s" * (4 * 2**20)), 413),
                            (dict(event_data={"blob": "x" * 2000}), 422), (dict(session_hash="s" * 65), 422),
                            (dict(session_hash="../../etc"), 422), (dict(oauth_token="t"), 422),
                            (dict(data=[photo, "x" * 300]), 422), (dict(data=[photo] * 9), 422),
                            (dict(data=[photo, {"nested": [1, 2]}]), 422)):
        body = {"data": [photo, "cats_vs_dogs"], "fn_index": fn_index, "session_hash": "bounded",
                "event_data": None, **payload}
        for _ in range(3 if status == 413 else 1):
            response = httpx.post(f"{url}/gradio_api/queue/join", json=body, timeout=60)
            assert response.status_code == status, (list(payload), response.status_code, response.text[:300])
    assert rss_mb(pid) - before < 100


@pytest.mark.slow
@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=A; boundary=B",
                                          'multipart/form-data; boundary="a\\"b"', "multipart/form-data"])
def test_an_ambiguous_multipart_boundary_is_refused(hostile_server, content_type):
    """`boundary=A; boundary=B` or an escaped quote once let 200 and 900 files through the 4-file cap: the count
    and Gradio's parser read different boundaries."""
    url, _, uploads = hostile_server
    before = files_in(uploads)
    body = b"".join(b'--B\r\nContent-Disposition: form-data; name="files"; filename="x%d.jpg"\r\n\r\nxx\r\n' % i
                    for i in range(20)) + b"--B--\r\n"
    response = httpx.post(f"{url}/gradio_api/upload", content=body, headers={"Content-Type": content_type},
                          timeout=30)
    assert response.status_code == 400 and response.json()["error"] == "bad_multipart", response.text
    assert files_in(uploads) == before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["", "x" * 5000 + ".jpg", ". ."])
@pytest.mark.parametrize("route, field", [("/api/predict", "file"), ("/gradio_api/upload", "files")])
def test_an_odd_upload_name_gets_a_400_that_says_so(hostile_server, shared, name, route, field):
    """A 5,000-character name was answered 413 ("too large"), an empty one 500."""
    url, _, uploads = hostile_server
    before = files_in(uploads)
    photo = (shared / "cats_and_dogs_filtered/validation/cats/cat.2001.jpg").read_bytes()
    response = httpx.post(f"{url}{route}", files={field: (name, photo)}, timeout=30)
    assert response.status_code == 400 and response.json()["error"] == "bad_filename", response.text[:300]
    assert "name" in response.json()["message"]
    assert files_in(uploads) == before


@pytest.mark.slow
def test_concurrent_large_decodes_stay_within_a_memory_budget_in_every_image_mode():
    """Large images of each mode at once through the server's decode path and the model's preprocessing, in a
    fresh process so its high-water mark is this test's. Once, one 89 KB 16-bit PNG cost +967 MB (a float64
    copy at full size), a palette PNG with transparency and a GIF a full-size RGBA or RGB copy, RGBA a
    premultiplied one; a 91-byte 2047 x 1 PNG became a 524,032 x 255 image (+1.26 GB) when its short side was
    resized for the model; and a 1 MB progressive 4:4:4 JPEG of 9450 x 9450 held 520 MB of coefficients."""
    child = textwrap.dedent("""
        import io, json
        from concurrent.futures import ThreadPoolExecutor
        import numpy as np
        from PIL import Image
        from petlab.inference.preprocessing import Preprocessing
        from petlab.serving import ServingError, decode_upload, return_freed_memory_promptly
        return_freed_memory_promptly()  # as demo/app.py does at start
        pre = Preprocessing(224, 256, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # what a served model does next
        def encoded(img, fmt, **kw):
            buffer = io.BytesIO()
            img.save(buffer, fmt, **kw)
            return buffer.getvalue()
        palette = Image.new("P", (6300, 6300), 1)
        palette.putpalette([255, 0, 0, 0, 255, 0] * 128)
        sixteen = np.zeros((6300, 6300), np.uint16)
        sixteen[::7] = 60000
        big = Image.new("RGB", (9450, 9450), (90, 140, 60))
        cases = {"16-bit PNG": (encoded(Image.fromarray(sixteen), "PNG"), 6),
                 "palette PNG with transparency": (encoded(palette, "PNG", transparency=0), 6),
                 "GIF": (encoded(palette, "GIF"), 6),
                 "RGBA PNG": (encoded(Image.new("RGBA", (6000, 6000), (40, 160, 90, 128)), "PNG"), 6),
                 "2047x1 PNG": (encoded(Image.new("RGB", (2047, 1), (200, 10, 10)), "PNG"), 3),
                 "1x2047 PNG": (encoded(Image.new("RGB", (1, 2047), (200, 10, 10)), "PNG"), 3),
                 "progressive 4:4:4 JPEG": (encoded(big, "JPEG", progressive=True, subsampling=0, quality=95), 4)}
        del big, palette, sixteen
        def status(key):
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) // 1024
        def served(data):
            try:
                image = decode_upload(data, "big")
            except ServingError as err:
                return err.code
            pre.batch_array([image])
            return list(image.size)
        out = {}
        for name, (data, n) in cases.items():
            open("/proc/self/clear_refs", "w").write("5")
            before = status("VmRSS")
            with ThreadPoolExecutor(n) as pool:
                answers = list(pool.map(lambda _: served(data), range(n)))
            out[name] = {"growth_mb": status("VmHWM") - before, "answers": answers, "bytes": len(data)}
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    for name, result in results.items():
        # one heavy decode at a time (DecodeBudget): its decoded size (at most 160 MB) and a strip's conversion
        assert result["growth_mb"] < 300, (name, result)
        if name.startswith(("2047", "1x")):
            assert all(max(size) <= 4 * min(size) for size in result["answers"]), (name, result)  # its centre
        elif name.startswith("progressive"):
            assert result["answers"] == ["too_large"] * 4 and result["bytes"] < 2 * 2**20, (name, result)
        else:
            assert all(max(size) < 2048 for size in result["answers"]), (name, result)  # shrunk after decoding


class RunsCode:
    """Unpickling this runs a shell command: what a crafted best.pt would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_run(real_run: Path, dest: Path, marker: Path) -> Path:
    shutil.copytree(real_run, dest, symlinks=False)
    for name in ("best.pt", "last.pt"):
        torch.save({"model": RunsCode(marker), "config": {}}, dest / "checkpoints" / name)
    return dest


@pytest.mark.slow
def test_a_crafted_checkpoint_is_refused_and_its_code_never_runs(real_runs, shared, tmp_path):
    marker = tmp_path / "the-payload-ran"
    runs = tmp_path / "runs"
    run_dir = crafted_run(real_runs["custom_cnn"], runs / real_runs["custom_cnn"].name, marker)
    attempts = {
        "evaluate": script("evaluate.py", run_dir, "--data-dir", shared / "cats_and_dogs_filtered", check=False),
        "promote": script("promote.py", "--registry", tmp_path / "registry", "--task", "cats_vs_dogs",
                          "--runs-root", runs, check=False),
        "resume": script("run.py", "--resume", run_dir, check=False),
    }
    for name, proc in attempts.items():
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "not a plain petlab checkpoint" in errors[0], (name, proc.stderr[-2000:])
        assert "posix.system" in errors[0] and "Traceback" not in proc.stderr
    assert not marker.exists()


def crafted_export(real_pt2: Path, dest: Path, marker: Path) -> None:
    """A real model.pt2 with no pickle in it, whose `guards_code` (models/model.json) is a shell command:
    torch.export.load turns that list into Python source, exec()s it, and runs it on every forward."""
    import zipfile

    with zipfile.ZipFile(real_pt2) as source, zipfile.ZipFile(dest, "w") as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("models/model.json"):
                program = json.loads(data)
                program["guards_code"] = [f"__import__('os').system('touch {marker}') == 0 or True"]
                data = json.dumps(program).encode()
            out.writestr(info, data)


@pytest.mark.slow
def test_a_crafted_export_in_the_registry_never_runs_and_health_says_what_serves(promoted_registry, shared, tmp_path):
    """With the ONNX files of a version removed, one /api/predict once ran a model.pt2's guards (and
    predict.py --registry did the same), while /api/health said "torch_export, refused {}". Now no PyTorch
    export of a registry is ever loaded: the server refuses the version, predict.py uses the weights-only
    state dict, and the payload (shown live first, under torch.export.load itself) never runs."""
    from petlab.registry import Registry
    from petlab.serving import ServedModels, ServingError

    registry_dir = tmp_path / "registry"
    shutil.copytree(promoted_registry, registry_dir)
    version = registry_dir / "cats_vs_dogs" / "v1"
    marker, proof = tmp_path / "the-payload-ran", tmp_path / "torch-export-load-runs-it"
    for name in ("model.pt2", "pet_view.pt2"):
        crafted_export(promoted_registry / "cats_vs_dogs" / "v1" / name, version / name, marker)
    crafted_export(promoted_registry / "cats_vs_dogs" / "v1" / "model.pt2", tmp_path / "proof.pt2", proof)
    subprocess.run([sys.executable, "-c", f"import torch; torch.export.load({str(tmp_path / 'proof.pt2')!r})"
                    ".module()(torch.zeros(2, 3, 224, 224))"], check=True, capture_output=True, timeout=300)
    assert proof.exists()  # the crafted file is a live payload
    for name in ("model.onnx", "model.int8.onnx", "pet_view.onnx", "pet_view.int8.onnx"):
        (version / name).unlink(missing_ok=True)

    models = ServedModels(Registry(registry_dir))
    models.warm_up()
    with pytest.raises(ServingError) as refused:
        models.model("cats_vs_dogs")
    assert refused.value.status == 503 and "only ONNX is served" in refused.value.message
    health = models.health()["models"]["cats_vs_dogs"]
    assert health["format"] == "not served" and "model.onnx does not load (missing)" in health["not_served"]
    assert str(tmp_path) not in json.dumps(health)

    photos = shared / "cats_and_dogs_filtered/validation/dogs"
    proc = script("predict.py", "--registry", registry_dir, "--task", "cats_vs_dogs", sorted(photos.glob("*.jpg"))[0],
                  "--out", tmp_path / "labels.csv", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(eager, sha256:" in (tmp_path / "labels.csv").read_text()  # the weights-only state dict answered
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["sweep.py", "--sweep", REPO / "experiments/configs/sweeps/lite0_cats_vs_dogs.yaml", "--trials", "1"],
    ["dashboard.py"],
])
def test_a_database_password_never_appears_in_what_the_scripts_print(command):
    url = "postgresql+psycopg://petlab:s3cret-pw@127.0.0.1:1/petlab"  # nothing listens on port 1
    proc = script(*command, "--storage", url, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "petlab:***@127.0.0.1:1/petlab" in error and "cannot open the study storage" in error
    assert "s3cret-pw" not in proc.stdout + proc.stderr


def resumable_copy(real_run: Path, dest: Path, edit) -> Path:
    """A copy of a real run whose config.yaml `edit(config)` has changed since its checkpoint was written."""
    shutil.copytree(real_run, dest)
    config = yaml.safe_load((dest / "config.yaml").read_text())
    edit(config)
    (dest / "config.yaml").write_text(yaml.safe_dump(config))
    return dest


@pytest.mark.slow
def test_resume_is_refused_when_a_class_folder_was_renamed(tiny, tmp_path):
    """Breed names are the folders' own (cats vs dogs maps any cat(s)/dog(s) spelling to cat and dog)."""
    from tests.imaging import make_imagefolder
    from tests.runs import only_run_dir

    data = make_imagefolder(tmp_path / "data", {"train": 8, "val": 4, "test": 4}, classes=("Beagle", "Toy_Poodle"))
    script("run.py", *tiny.on(data).argv("--task", "breeds", "--epochs", "1", "--tracking", "none",
                                         "--output-dir", tmp_path / "runs"))
    run_dir = only_run_dir(tmp_path / "runs")
    for split in ("train", "val", "test"):  # Beagle -> Whippet: it now sorts after Toy_Poodle, so labels swap
        (data / split / "Beagle").rename(data / split / "Whippet")
    proc = script("run.py", "--resume", run_dir, check=False, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "cannot resume" in error and "'Beagle'" in error and "'Whippet'" in error and "permute the labels" in error


@pytest.mark.slow
def test_resume_is_refused_when_two_class_folders_were_renamed_into_each_other(tiny, tmp_path):
    """Beagle and Toy_Poodle swapped names: the class list is the same, the labels would be permuted. Once
    accepted, and the completed run's results.json was overwritten."""
    from tests.imaging import make_imagefolder
    from tests.runs import only_run_dir

    data = make_imagefolder(tmp_path / "data", {"train": 8, "val": 4, "test": 4}, classes=("Beagle", "Toy_Poodle"))
    script("run.py", *tiny.on(data).argv("--task", "breeds", "--epochs", "1", "--tracking", "none",
                                         "--output-dir", tmp_path / "runs"))
    run_dir = only_run_dir(tmp_path / "runs")
    results = (run_dir / "results.json").read_bytes()
    for split in ("train", "val", "test"):
        (data / split / "Beagle").rename(data / split / "swap")
        (data / split / "Toy_Poodle").rename(data / split / "Beagle")
        (data / split / "swap").rename(data / split / "Toy_Poodle")
    proc = script("run.py", "--resume", run_dir, check=False, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "cannot resume" in error and "photos of 2 class(es) changed" in error and "'Beagle'" in error
    assert (run_dir / "results.json").read_bytes() == results


@pytest.mark.slow
def test_resume_is_refused_when_the_recipe_was_edited(real_runs, tmp_path):
    run_dir = resumable_copy(real_runs["custom_cnn"], tmp_path / "run", lambda config: config["train"].update(lr=0.5))
    proc = script("run.py", "--resume", run_dir, check=False, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "cannot resume" in error and "train.lr" in error and "-> 0.5" in error


@pytest.mark.slow
def test_a_version_that_cannot_load_answers_503_at_once_instead_of_reloading_per_request(
        promoted_registry, tmp_path, caplog):
    from petlab.registry import Registry
    from petlab.serving import ServedModels, ServingError

    registry_dir = tmp_path / "registry"
    shutil.copytree(promoted_registry, registry_dir)
    for file in (registry_dir / "cats_vs_dogs" / "v1").iterdir():
        if file.suffix in (".onnx", ".pt2", ".ts", ".pt"):
            file.write_bytes(b"damaged on disk")
    models = ServedModels(Registry(registry_dir))
    for _ in range(3):
        with pytest.raises(ServingError) as raised:
            models.model("cats_vs_dogs")
        assert raised.value.status == 503 and raised.value.code == "model_unavailable"
        assert "cats_vs_dogs v1 could not be loaded" in raised.value.message
    # one load tried, the two later requests answered from the remembered failure (counted, not timed: a timing
    # would depend on the machine being quiet)
    assert sum("could not load cats_vs_dogs v1" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.slow
def test_a_rollback_while_a_promotion_exports_is_not_undone(promoted_registry, real_runs, tmp_path):
    from tests.registry import clone_run

    registry = tmp_path / "registry"
    shutil.copytree(promoted_registry, registry)
    runs = tmp_path / "runs"
    script("promote.py", "--registry", registry, "--task", "cats_vs_dogs", "--force",  # v2: something to roll back
           "--run", clone_run(real_runs["mobilenet_v2"], runs / "mobilenet_v2"))
    # v3: gated against v2 (forced past it), then tens of seconds of exporting and verifying
    promotion = subprocess.Popen([sys.executable, str(REPO / "experiments/promote.py"), "--registry", str(registry),
                                  "--task", "cats_vs_dogs", "--force", "--run",
                                  str(clone_run(real_runs["lite0"], runs / "lite0"))],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 300
    while not list((registry / "cats_vs_dogs").glob(".staging-*")):  # past the gate, exporting
        assert promotion.poll() is None and time.monotonic() < deadline, promotion.communicate()
        time.sleep(0.1)
    script("promote.py", "--registry", registry, "--task", "cats_vs_dogs", "--rollback", "1")
    _, stderr = promotion.communicate(timeout=300)
    assert promotion.returncode == 2, stderr[-2000:]
    (error,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "changed from v2 to v1 while this promotion was exporting" in error
    index = json.loads((registry / "cats_vs_dogs" / "index.json").read_text())
    assert [e["version"] for e in index["versions"] if e["status"] == "production"] == [1]  # the rollback stands
    assert not (registry / "cats_vs_dogs" / "v3").exists() and not list((registry / "cats_vs_dogs").glob(".staging-*"))


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MB filesystem (tmpfs): a full disk, not a simulated one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_a_full_disk_while_caching_is_one_error_line_and_leaves_nothing(small_disk, shared, tiny, tmp_path):
    env = {**os.environ, "PETLAB_CACHE_DIR": str(small_disk)}
    proc = script("run.py", *tiny.on(shared / "cats_and_dogs_filtered").argv(
        "--epochs", "1", "--limit-batches", "1", "--tracking", "none", "--output-dir", tmp_path / "runs"),
                  env=env, check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]  # not -7 (SIGBUS) from a write through the memmap
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "no room for the decode cache" in error and "GiB free" in error and "PETLAB_CACHE_DIR" in error
    assert not [p for p in small_disk.rglob("*") if p.is_file()]  # the claimed space is given back


def fill(disk: Path, leave: int = 0) -> None:
    """Fill a small disk so that only `leave` bytes (whole pages) stay free."""
    free = shutil.disk_usage(disk).free - leave
    subprocess.run(["fallocate", "-l", str(free), str(disk / "filler")], check=True)


@pytest.mark.slow
def test_a_full_disk_where_a_run_writes_is_one_error_line(small_disk, shared, tiny, tmp_path):
    """Outside the decode cache a full disk once gave a traceback (exit 1), and a logging error per line."""
    fill(small_disk)
    proc = script("run.py", *tiny.on(shared / "cats_and_dogs_filtered").argv(
        "--epochs", "1", "--limit-batches", "1", "--tracking", "none", "--output-dir", small_disk / "runs"),
                  check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "no room to write" in error and "config.yaml" in error and "MB free there" in error
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr
    assert not list(small_disk.rglob("*.tmp"))


@pytest.mark.slow
def test_a_decode_cache_whose_metadata_finds_no_room_leaves_no_orphan(small_disk, tmp_path):
    """The data file was renamed into place, then its metadata write failed: a 5.85 MB .u8 nobody reads."""
    from petlab.data.cache import decode_split
    from petlab.data.transforms import Preprocessing
    from tests.imaging import make_imagefolder

    folder = make_imagefolder(tmp_path / "photos", {"train": 4})
    samples = [(str(p), int(p.parent.name == "dogs")) for p in sorted((folder / "train").rglob("*.jpg"))]
    pre = Preprocessing(image_size=64, resize_size=72, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    data_bytes = len(samples) * 72 * 72 * 3
    fill(small_disk, leave=-(-data_bytes // 4096) * 4096)  # room for the data, none for its metadata
    with pytest.raises(OSError, match="No space left on device") as error:
        decode_split(samples, pre, small_disk / "cache", "train", threads=1)
    assert error.value.filename.endswith(".json")  # the metadata's write failed, and says so
    assert [p.name for p in small_disk.rglob("*") if p.is_file()] == ["filler"]


@pytest.mark.slow
def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    from petlab.fileio import atomic_write

    target = tmp_path / "best.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".best.pt.{dead.stdout.strip()}.x1y2z3.tmp"  # what kill -9 mid-write leaves
    orphan.write_bytes(b"half a checkpoint")
    live = tmp_path / f".best.pt.{os.getpid()}.a1b2c3.tmp"  # a write in progress in a live process
    live.write_bytes(b"being written")
    atomic_write(target, b"whole")
    assert target.read_bytes() == b"whole" and not orphan.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["best.pt", live.name])


@pytest.mark.slow
def test_a_version_that_is_still_loading_does_not_hold_up_the_others(promoted_registry, tmp_path):
    """One task's first load (here held open for as long as the test likes: its card.json is a FIFO that
    nothing writes yet) must not stall the requests of another task, whose model is loaded."""
    import threading

    from petlab.registry import Registry
    from petlab.serving import ServedModels

    registry_dir = tmp_path / "registry"
    shutil.copytree(promoted_registry, registry_dir)
    shutil.copytree(registry_dir / "cats_vs_dogs", registry_dir / "breeds")
    card = registry_dir / "breeds" / "v1" / "card.json"
    text = card.read_text()
    card.unlink()
    os.mkfifo(card)
    models = ServedModels(Registry(registry_dir))
    models.model("cats_vs_dogs")
    slow = threading.Thread(target=models.model, args=("breeds",), daemon=True)
    slow.start()
    try:
        time.sleep(0.5)
        assert slow.is_alive()  # blocked in its load, holding whatever it holds
        answered = []
        fast = threading.Thread(target=lambda: answered.append(models.model("cats_vs_dogs").task), daemon=True)
        fast.start()
        fast.join(timeout=30)  # the slow load is blocked for good until the fifo is written: any answer is "not held"
        assert answered == ["cats_vs_dogs"]
    finally:
        with open(card, "w") as fifo:  # lets the slow load finish
            fifo.write(text)
    slow.join(timeout=60)
    assert not slow.is_alive() and models.model("breeds").task == "breeds"

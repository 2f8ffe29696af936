"""What keeps the public demo safe. The design is an allow list: the server answers the routes the page and
the JSON API use and nothing else, takes only the request shapes they send, and bounds what each holds.

demo/app.py mounts Gradio on a FastAPI app (`gr.mount_gradio_app`), and a mounted app skips checks that
`launch()` makes. Around it, outermost first:
- `AllowedRoutes`: PUBLIC_ROUTES, one list (also in docs/demo.md), is every (method, path) the server
  answers; anything else is 404 before Gradio sees it: Gradio's URL proxy (`proxy=`, `file=<URL>`, the older
  `file/<URL>`), its old route aliases (`/api/<name>`, `/run/<name>`), `process_recording`, websockets, and
  whatever a Gradio upgrade adds. `file=` serves only files in the upload folder or the example folders.
- `BodyLimit`: every body is counted while it streams.
- `QueueGuard`: the bodies Gradio's queue stores (`queue/join`, `call/classify`) are read whole (at most
  QUEUE_BODY_BYTES), checked against the shape the page and gradio_client send (each photo a FileData
  naming an uploaded file, never a URL; `session_hash`, `event_data` and every string bounded) and
  admitted only while this client has few events waiting and the queue tracks few sessions: sessions
  nobody reads are dropped once idle, so Gradio's 2,000-session LRU is never reached (past it, its queue
  dies for good), and nothing a client sends outlives the queue's wait by long.
- `UploadBudget`: the files one upload request may carry (one unambiguous multipart boundary, counted
  with the parser's own) and what the upload folder holds (oldest files evicted first).
Inside the app, `uploaded_photo` (the page's photo input) takes a file only from Gradio's upload folder,
never a data: URL, and never opens it (petlab's bounded decoder does), and `mark_launched` sets what
`launch()` would, so Gradio checks every other input too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from fastapi.responses import JSONResponse
from gradio.utils import get_upload_folder
from starlette.formparsers import MultiPartException

log = logging.getLogger("petlab.demo")
UPLOAD_ROUTE = "/gradio_api/upload"
MULTIPART_ROUTES = (UPLOAD_ROUTE, "/api/predict")


def log_request(**fields) -> None:
    """One JSON line per request: what was asked, what answered, how long it took."""
    log.info(json.dumps(fields, sort_keys=True))


async def answer(scope, send, status: int, code: str, message: str) -> None:
    log_request(route=scope.get("path"), status=status, outcome=code)
    await JSONResponse({"error": code, "message": message}, status_code=status,
                       headers={"Connection": "close"})(scope, None, send)


def uploaded_photo(**image_kwargs) -> gr.Image:
    """The page's photo input: gr.Image in the browser, but its value reaches the handler only as the path of
    a file Gradio's upload route wrote (in its upload folder), and Gradio never opens it: gr.Image's own
    preprocess hands every upload to PIL.Image.open and decodes data: URLs into the cache. (Set on the
    instance: a subclass of a Gradio component makes Gradio write a .pyi file beside its source.)"""
    image = gr.Image(type="filepath", image_mode=None, **image_kwargs)

    def preprocess(payload) -> str | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            raise gr.Error("send the photo as an upload (POST /gradio_api/upload), not as a data: URL")
        return str(uploaded_file(payload.path))

    image.preprocess = preprocess
    return image


def uploaded_file(path: str | os.PathLike | None) -> Path:
    """`path` if it is a file in Gradio's upload folder (symbolic links resolved), else gr.Error."""
    if not inside(path, [get_upload_folder()]):
        raise gr.Error("only an uploaded photo can be classified: upload it through the page or "
                       "POST /gradio_api/upload first")
    return Path(path).resolve()


def mark_launched(blocks: gr.Blocks) -> None:
    """What `launch()` sets and `mount_gradio_app` does not: Gradio then checks every file an event's input
    names (only its upload folder is accepted for inputs) on a mounted app too."""
    blocks.has_launched = True


@dataclass(frozen=True)
class Route:
    methods: frozenset
    pattern: str  # a regular expression the whole (percent-decoded) path must match
    used_by: str


def route(methods: str, pattern: str, used_by: str) -> Route:
    return Route(frozenset(methods.split()), pattern, used_by)


SESSION = r"[A-Za-z0-9_-]{1,64}"  # what the page and gradio_client make: random letters and digits
# Every route the public server answers; anything else is 404 before Gradio sees it. docs/demo.md lists the
# same, and tests/test_hostile.py fails when the app grows a route that is neither here nor refused there.
PUBLIC_ROUTES = (
    route("GET HEAD", r"/", "the page"),
    route("GET", r"/config/?", "the page's layout, read by the page and by gradio_client"),
    route("GET", r"/(assets|static|svelte)/[\w.@~+-]+(/[\w.@~+-]+)*", "the page's scripts, styles and fonts"),
    route("GET", r"/(gradio_api/)?theme\.css|/favicon\.ico|/manifest\.json|/robots\.txt", "the page's chrome"),
    route("GET", r"/gradio_api/info/?", "gradio_client's view_api() and the page's \"Use via API\""),
    route("GET", r"/gradio_api/startup-events", "the page, once on load"),
    route("GET", rf"/gradio_api/heartbeat/{SESSION}", "the page, while it is open"),
    route("POST", r"/gradio_api/upload", "the page and gradio_client: a photo, before it is classified"),
    route("GET", r"/gradio_api/upload_progress", "the page, while a photo uploads"),
    route("GET HEAD", r"/gradio_api/file=/.+", "the page: an uploaded or example photo, shown back"),
    route("POST", r"/gradio_api/queue/join", "the page: an event (classify, heatmap, task change)"),
    route("GET", r"/gradio_api/queue/data", "the page: an event's answers, streamed"),
    route("POST", r"/gradio_api/call/classify", "gradio_client and curl: classify, step one"),
    route("GET", rf"/gradio_api/call/classify/{SESSION}", "gradio_client and curl: classify, its answer"),
    route("POST", r"/api/predict", "the JSON API"),
    route("GET", r"/api/health", "the JSON API: what is served"),
    route("GET", r"/api/figures/[\w-]{1,64}/[\w.-]{1,128}", "the model card's figures"),
    route("GET", r"/api/docs|/api/openapi\.json", "the JSON API's own documentation"),
)
_ROUTE_PATTERNS = [(r.methods, re.compile(r.pattern)) for r in PUBLIC_ROUTES]
FILE_ROUTE = "/gradio_api/file="
MAX_QUERY_BYTES = 1024  # the page's longest query string is an upload id or a session hash


def allowed_route(method: str, path: str) -> bool:
    return any(method in methods and pattern.fullmatch(path) for methods, pattern in _ROUTE_PATTERNS)


class AllowedRoutes:
    """Answers PUBLIC_ROUTES and nothing else (404); `file=` only for a file inside `folders()` (Gradio's upload
    folder and the example photos' folders): no URL, no other file of the server, ever."""

    def __init__(self, app, folders):
        self.app, self.folders = app, folders

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":  # the page and the API use none: refused before the handshake
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "")
        weird = ("//" in path or "/../" in path or "/./" in path or path.endswith(("/..", "/.")) or "\\" in path
                 or "\x00" in path or len(scope.get("query_string", b"")) > MAX_QUERY_BYTES)
        if weird or not allowed_route(method, path) or (
                path.startswith(FILE_ROUTE) and not inside(path[len(FILE_ROUTE):], self.folders())):
            return await answer(scope, send, 404, "not_found", "no such route on this server")
        return await self.app(scope, receive, send)


def inside(path: str | os.PathLike | None, folders) -> bool:
    """Whether `path` is an existing file inside one of `folders` (symbolic links resolved); never a URL."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    path = os.fspath(path)
    if "://" in path or path.startswith(("http:", "https:", "data:", "file:")):
        return False
    try:
        resolved = Path(path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return False
    return resolved.is_file() and any(resolved.is_relative_to(Path(f).resolve()) for f in folders)


QUEUE_ROUTES = ("/gradio_api/queue/join", "/gradio_api/call/classify")
QUEUE_BODY_BYTES = 64 * 1024  # the page's largest join (a photo's FileData and a task) is under 1 KB
PAYLOAD_KEYS = {"data", "event_data", "fn_index", "trigger_id", "session_hash"}
FILE_DATA_KEYS = {"path", "url", "size", "orig_name", "mime_type", "is_stream", "meta"}
MAX_INPUTS, MAX_STRING, MAX_EVENT_DATA = 8, 256, 1024


class BadPayload(ValueError):
    pass


def check_payload(payload, photo_ok) -> None:
    """What the page and gradio_client send to Gradio's queue, and nothing else; BadPayload says what is not.
    `photo_ok(path)`: whether a FileData's path names an uploaded file."""
    if not isinstance(payload, dict):
        raise BadPayload("the body must be a JSON object")
    if set(payload) - PAYLOAD_KEYS:
        raise BadPayload(f"unexpected fields {sorted(set(payload) - PAYLOAD_KEYS)}; allowed: {sorted(PAYLOAD_KEYS)}")
    session = payload.get("session_hash")
    if session is not None and not (isinstance(session, str) and re.fullmatch(SESSION, session)):
        raise BadPayload("session_hash must be 1 to 64 letters, digits, _ or -")
    for key in ("fn_index", "trigger_id"):
        if payload.get(key) is not None and (type(payload[key]) is not int or not 0 <= payload[key] < 10_000):
            raise BadPayload(f"{key} must be a small whole number")
    if payload.get("event_data") is not None and len(json.dumps(payload["event_data"])) > MAX_EVENT_DATA:
        raise BadPayload(f"event_data is over {MAX_EVENT_DATA} bytes")
    data = payload.get("data")
    if not isinstance(data, list) or len(data) > MAX_INPUTS:
        raise BadPayload(f"data must be a list of at most {MAX_INPUTS} inputs")
    for item in data:
        if item is None or isinstance(item, (bool, int, float)):
            continue
        if isinstance(item, str):
            if len(item) > MAX_STRING:
                raise BadPayload(f"a text input is over {MAX_STRING} characters")
            continue
        if not (isinstance(item, dict) and item.get("meta") == {"_type": "gradio.FileData"}
                and not set(item) - FILE_DATA_KEYS):
            raise BadPayload("each input is a short string, a number, or a FileData of an uploaded photo")
        path, url = item.get("path"), item.get("url")
        if item.get("is_stream") or not isinstance(path, str) or not photo_ok(path):
            raise BadPayload("a photo must be a file uploaded first (POST /gradio_api/upload), named by the path "
                             "the upload answered; never a URL or another file")
        if url is not None and (not isinstance(url, str) or len(url) > 4096 or url.startswith("data:")):
            raise BadPayload("send the photo as an upload (POST /gradio_api/upload), not as a data: URL")
        for key in ("orig_name", "mime_type"):
            if item.get(key) is not None and (not isinstance(item[key], str) or len(item[key]) > MAX_STRING):
                raise BadPayload(f"a FileData's {key} is over {MAX_STRING} characters")


class QueueGuard:
    """Gradio's queue, bounded. What a join or call stores (its body) is read whole, within QUEUE_BODY_BYTES,
    and checked by check_payload before Gradio parses it. Then, on every join:
    - sessions with no event waiting or running, idle for `idle_s` (or the oldest idle ones while the queue
      tracks more than `max_sessions`), are dropped from the queue's per-session stores: Gradio keeps them
      (and their answers) until its 2,000-session LRU evicts them, and an eviction under a live event stops
      its queue for good ("Queue is stopped");
    - a client (its address) with `per_client` events waiting or running is answered 429, and a join that
      would make the queue track `max_sessions` busy sessions 503.
    Gradio's own `max_size` (demo/app.py) bounds the events waiting across all clients."""

    def __init__(self, app, blocks, photo_ok, per_client: int = 4, max_sessions: int = 500, idle_s: float = 30.0):
        self.app, self.blocks, self.photo_ok = app, blocks, photo_ok
        self.per_client, self.max_sessions, self.idle_s = per_client, max_sessions, idle_s
        self.seen: dict[str, float] = {}  # session -> when it last joined (or was first seen idle)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in QUEUE_ROUTES:
            return await self.app(scope, receive, send)
        too_large = (413, "too_large", f"a queue request's body is at most {QUEUE_BODY_BYTES} bytes")
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > QUEUE_BODY_BYTES:  # refused unread
            return await answer(scope, send, *too_large)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > QUEUE_BODY_BYTES:
                return await answer(scope, send, *too_large)
        try:
            payload = json.loads(body)
            check_payload(payload, self.photo_ok)
        except (ValueError, RecursionError) as exc:  # json's errors and BadPayload
            return await answer(scope, send, 422, "bad_request", str(exc)[:300] if isinstance(exc, BadPayload)
                                else "the body must be JSON")
        client = (scope.get("client") or ("unknown",))[0]
        refusal = self.admit(client, payload.get("session_hash"))
        if refusal:
            return await answer(scope, send, *refusal)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def admit(self, client: str, session: str | None) -> tuple[int, str, str] | None:
        queue = getattr(self.blocks, "_queue", None)
        if queue is None:
            return None
        busy = [e for waiting in queue.event_queue_per_concurrency_id.values() for e in waiting.queue]
        busy += [e for job in queue.active_jobs if job for e in job]
        mine = sum(1 for e in busy if e.request is not None and e.request.client is not None
                   and e.request.client.host == client)
        if mine >= self.per_client:
            return 429, "busy", (f"this client has {mine} events waiting or running; at most {self.per_client}: "
                                 "wait for their answers")
        busy_sessions = {e.session_hash for e in busy}
        self.drop_idle(queue, busy_sessions)
        if session is not None:
            self.seen[session] = time.monotonic()
        if len(busy_sessions) >= self.max_sessions:
            return 503, "queue_full", "the queue is full; try again in a few seconds"
        return None

    def drop_idle(self, queue, busy: set[str]) -> None:
        now = time.monotonic()
        sessions = queue.pending_messages_per_session
        for key in list(sessions):
            self.seen.setdefault(key, now)
        idle = sorted((t, k) for k, t in self.seen.items() if k not in busy)
        over = len(sessions) + 1 - self.max_sessions
        for i, (when, key) in enumerate(idle):
            if now - when < self.idle_s and i >= over:
                break
            sessions.pop(key, None)
            for event_id in queue.pending_event_ids_session.pop(key, ()):
                queue.event_ids_to_events.pop(event_id, None)
            del self.seen[key]


class BodyTooLarge(MultiPartException):
    """Raised into the app from `receive` once a body passes a limit. A MultiPartException, because
    both multipart parsers (Starlette's and Gradio's) catch that one and delete the files they had
    begun, so an abandoned upload leaves nothing on disk."""


class BodyLimit:
    """Every request body, on every route (the API, Gradio's /gradio_api/upload and its queue), is
    counted while it streams: a declared Content-Length over the limit is refused before a byte is
    read, and a chunked body (no Content-Length) is refused as soon as it passes the limit, with
    at most the limit plus one network chunk ever read. Checking after `await upload.read()` would
    first spool the whole body, so one client could fill the disk or the memory."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self.refuse(scope, send, int(declared))
        received = 0

        def count(message):
            nonlocal received
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                return "too_large", f"request body over the {self.max_bytes} byte maximum allowed size"
            return None

        replaced = False

        async def one_format(message):
            # Gradio's own parser also counts each file against max_file_size and answers in plain text; which
            # of the two trips first on a chunked body depends on how uvicorn happens to batch the reads. Its
            # refusal is answered as ours (logged, JSON), so every over-limit body gets one answer, every time.
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 413:
                headers = dict(message.get("headers") or [])
                replaced = not headers.get(b"content-type", b"").startswith(b"application/json")
                if replaced:
                    return await self.refuse(scope, send, received)
            if not replaced:
                await send(message)

        await guarded(self.app, scope, receive, one_format, count,
                      lambda code, message: self.refuse(scope, send, received))

    async def refuse(self, scope, send, size: int) -> None:
        log_request(route=scope.get("path"), status=413, outcome="too_large", body_bytes=size)
        await JSONResponse({"error": "too_large", "message": f"request body of {size}+ bytes is over the "
                                                             f"{self.max_bytes} byte limit"},
                           status_code=413, headers={"Connection": "close"})(scope, None, send)


async def guarded(app, scope, receive, send, check, refuse) -> None:
    """Run `app` with each body message passed to `check(message)`; the first time it names a problem
    (code, message), `refuse(code, message)` answers (unless the app has begun answering) and the app's
    receive raises BodyTooLarge, so its multipart parser deletes what it had begun."""
    started, refused = False, False

    async def checked_receive():
        nonlocal refused
        message = await receive()
        if message["type"] == "http.request" and not refused:
            problem = check(message)
            if problem:
                if not started:
                    await refuse(*problem)
                refused = True
                raise BodyTooLarge(problem[1])
        elif refused:
            raise BodyTooLarge("request refused")
        return message

    async def guarded_send(message):
        nonlocal started
        if refused:
            return  # we answered already; what the app says after the abort is dropped
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, checked_receive, guarded_send)
    except Exception:
        if not refused:
            raise  # BodyTooLarge, or whatever the app raised while it unwound from it, is answered


class UploadBudget:
    """Gradio's upload route keeps every file (for --upload-ttl-s), up to 1,000 in one request. Here one
    request may carry at most `max_files_per_request` files (counted while the body streams), and the upload
    folder holds at most `max_bytes` and `max_files`: after each upload the oldest files are evicted until it
    fits (the files there when the server started, the page's example photos, are kept and not counted).
    Evicting rather than refusing means a flood cannot shut the page for the others; a fresh upload is the
    newest file, so it survives until its prediction unless a flood writes the whole budget in between.
    On both multipart routes (the upload route and /api/predict) the boundary must be unambiguous and each
    file part must have a usable name (400 otherwise), checked while the body streams."""

    def __init__(self, app, max_bytes: int, max_files: int, max_files_per_request: int = 4):
        self.app, self.max_bytes, self.max_files = app, max_bytes, max_files
        self.max_files_per_request = max_files_per_request
        self.folder = Path(get_upload_folder())
        self.kept = set(self.files())  # the example photos Gradio cached at start
        self._lock = threading.Lock()

    def files(self) -> list[Path]:
        return [p for p in self.folder.rglob("*") if p.is_file()] if self.folder.is_dir() else []

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        upload = path == UPLOAD_ROUTE
        if not (upload or path in MULTIPART_ROUTES) or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        content_types = [v for k, v in scope.get("headers") or [] if k.lower() == b"content-type"]
        try:
            if len(content_types) > 1:
                raise BadMultipart("one Content-Type header, please")
            boundary = multipart_boundary(content_types[0] if content_types else b"")
        except BadMultipart as exc:
            return await answer(scope, send, 400, "bad_multipart", str(exc))
        parts, tail, headers_tail = 0, b"", b""

        def count(message):
            nonlocal parts, tail, headers_tail
            chunk = message.get("body", b"")
            body = tail + chunk
            parts += body.count(boundary) if boundary else 0
            tail = body[-(len(boundary) - 1):] if boundary else b""
            if upload and parts - 1 > self.max_files_per_request:  # n files: n + 1 delimiters
                return "too_many_files", (f"at most {self.max_files_per_request} files per upload request; "
                                          "send the others in further requests")
            # each part's header line (one may straddle two chunks: the last 16 KB are kept with the next)
            window = headers_tail + chunk
            for disposition in DISPOSITION.findall(window):
                problem = part_problem(disposition, files_only=upload)
                if problem:
                    return "bad_filename", problem
            headers_tail = window[-16384:]
            return None

        async def send_after_eviction(message):
            if upload and message["type"] == "http.response.start":
                self.evict()  # the upload is on disk: the folder fits its budget before the client hears of it
            await send(message)

        await guarded(self.app, scope, receive, send_after_eviction, count,
                      lambda code, message: answer(scope, send, 400 if code == "bad_filename" else 413, code, message))

    def evict(self) -> list[Path]:
        """Delete the oldest uploads until the folder is within its budget; returns what went."""
        with self._lock:
            stats = []
            for path in self.files():
                if path in self.kept:
                    continue
                try:
                    stats.append((path.stat(), path))
                except OSError:
                    continue  # deleted meanwhile (Gradio's delete_cache)
            total, count = sum(s.st_size for s, _ in stats), len(stats)
            evicted = []
            for st, path in sorted(stats, key=lambda item: item[0].st_mtime):
                if total <= self.max_bytes and count <= self.max_files:
                    break
                path.unlink(missing_ok=True)
                try:
                    path.parent.rmdir()  # Gradio keeps each file in a folder named by its hash
                except OSError:
                    pass
                total, count = total - st.st_size, count - 1
                evicted.append(path)
            if evicted:
                log_request(route=UPLOAD_ROUTE, outcome="evicted", files=len(evicted))
            return evicted


BCHARS = rb"0-9A-Za-z'()+_,./:=?-"  # RFC 2046's boundary characters (and a space, not last)
BOUNDARY = re.compile(rb"[%s][ %s]{0,68}[%s]|[%s]" % (BCHARS, BCHARS, BCHARS, BCHARS))
DISPOSITION = re.compile(rb"\r\nContent-Disposition:([^\r\n]*)\r\n", re.IGNORECASE)  # a part's header line
FILENAME = re.compile(rb';\s*filename\*?=\s*("[^"\r\n]*"|[^;\r\n]*)', re.IGNORECASE)
MAX_FILENAME_BYTES = 255  # what a Linux file system takes as one name


class BadMultipart(ValueError):
    pass


def multipart_boundary(content_type: bytes) -> bytes:
    """The delimiter (`--` + boundary) of a multipart/form-data body; b"" if it is not multipart. BadMultipart
    where the header is ambiguous: two boundary parameters (`boundary=A; boundary=B`, which one parser reads
    one way and another the other) or a boundary outside RFC 2046's characters (an escaped quote), so that
    the count here and Gradio's parser always agree on where the parts are."""
    kind, _, params = content_type.partition(b";")
    if kind.strip().lower() != b"multipart/form-data":
        return b""
    found = []
    for param in params.split(b";"):
        key, _, value = param.strip().partition(b"=")
        if key.strip().lower() == b"boundary":
            found.append(unquoted(value))
    if len(found) != 1 or not BOUNDARY.fullmatch(found[0]):
        raise BadMultipart("a multipart body needs exactly one boundary parameter of RFC 2046's characters "
                           "(letters, digits, '()+_,-./:=? and space), at most 70 of them")
    return b"--" + found[0]


def unquoted(value: bytes) -> bytes:
    """A header parameter's value, less the double quotes around it (if any) and the spaces outside them."""
    value = value.strip()
    return value[1:-1] if len(value) >= 2 and value[:1] == value[-1:] == b'"' else value


def part_problem(disposition: bytes, files_only: bool) -> str | None:
    """Why a multipart part (its Content-Disposition line) cannot be taken, or None: a file needs a usable name,
    and `files_only` (Gradio's upload route) takes nothing but files."""
    found = FILENAME.search(disposition)
    if found is None:
        return "every part of an upload must be a file with a name (filename=...)" if files_only else None
    return filename_problem(found.group(1))


def filename_problem(name: bytes) -> str | None:
    """Why an uploaded file's name (as its part header gives it) cannot be kept, or None."""
    base = unquoted(name).replace(b"\\", b"/").rsplit(b"/", 1)[-1]
    if not base.strip(b". "):
        return "an uploaded file needs a name (the filename of its form part is empty)"
    if len(base) > MAX_FILENAME_BYTES:
        return f"an uploaded file's name is at most {MAX_FILENAME_BYTES} bytes; this one has {len(base)}"
    if b"\x00" in base:
        return "an uploaded file's name may not hold a NUL byte"
    return None

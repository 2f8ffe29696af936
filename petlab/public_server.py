"""What keeps the public demo safe: files reach it only as uploads, bodies and the upload folder are bounded.

demo/app.py mounts Gradio on a FastAPI app (`gr.mount_gradio_app`), and a mounted app skips checks that
`launch()` makes: Gradio 6 checks the paths an event's input names only once `blocks.has_launched` is set,
which only `launch()` does. Without it, POST /gradio_api/call/classify with `{"path": "/etc/passwd"}` copied
that file into the upload cache and served it back. So, whatever Gradio does:
- `uploaded_photo` (the page's photo input) takes a file only from Gradio's upload folder, never a data: URL,
  and never opens it (petlab's bounded decoder does);
- `mark_launched` sets what `launch()` would, so every other input of every event is checked by Gradio too;
- `PublicRoutes` refuses Gradio's URL proxy (/gradio_api/file=https://..., /gradio_api/proxy=): the demo
  serves no remote file, and must not fetch one for a stranger;
- `BodyLimit` bounds every request body while it streams, `UploadBudget` the files one upload request may
  carry and what the upload folder holds (oldest files evicted first).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import gradio as gr
from fastapi.responses import JSONResponse
from gradio.utils import get_upload_folder
from starlette.formparsers import MultiPartException

log = logging.getLogger("petlab.demo")
UPLOAD_ROUTE = "/gradio_api/upload"


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
    folder = Path(get_upload_folder()).resolve()
    try:
        resolved = Path(path).resolve(strict=True)
    except (OSError, TypeError, ValueError):
        resolved = None
    if resolved is None or not resolved.is_file() or not resolved.is_relative_to(folder):
        raise gr.Error("only an uploaded photo can be classified: upload it through the page or "
                       "POST /gradio_api/upload first")
    return resolved


def mark_launched(blocks: gr.Blocks) -> None:
    """What `launch()` sets and `mount_gradio_app` does not: Gradio then checks every file an event's input
    names (only its upload folder is accepted for inputs) on a mounted app too."""
    blocks.has_launched = True


class PublicRoutes:
    """Refuses Gradio's routes that fetch a URL for the caller: the demo has no remote file to serve, and a
    public server that fetches what a stranger names is an open proxy."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if "/gradio_api/proxy=" in path or ("/gradio_api/file=" in path and "://" in path.split("file=", 1)[1]):
            return await answer(scope, send, 403, "not_allowed", "this server serves no remote file")
        return await self.app(scope, receive, send)


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
    newest file, so it survives until its prediction unless a flood writes the whole budget in between."""

    def __init__(self, app, max_bytes: int, max_files: int, max_files_per_request: int = 4):
        self.app, self.max_bytes, self.max_files = app, max_bytes, max_files
        self.max_files_per_request = max_files_per_request
        self.folder = Path(get_upload_folder())
        self.kept = set(self.files())  # the example photos Gradio cached at start
        self._lock = threading.Lock()

    def files(self) -> list[Path]:
        return [p for p in self.folder.rglob("*") if p.is_file()] if self.folder.is_dir() else []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").endswith(UPLOAD_ROUTE):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        boundary = multipart_boundary(headers.get(b"content-type", b""))
        parts, tail = 0, b""

        def count(message):
            nonlocal parts, tail
            body = tail + message.get("body", b"")
            parts += body.count(boundary) if boundary else 0
            tail = body[-(len(boundary) - 1):] if boundary else b""
            if parts - 1 > self.max_files_per_request:  # n files: n + 1 delimiters
                return "too_many_files", (f"at most {self.max_files_per_request} files per upload request; "
                                          "send the others in further requests")
            return None

        async def send_after_eviction(message):
            if message["type"] == "http.response.start":
                self.evict()  # the upload is on disk: the folder fits its budget before the client hears of it
            await send(message)

        await guarded(self.app, scope, receive, send_after_eviction, count,
                      lambda code, message: answer(scope, send, 413, code, message))

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


def multipart_boundary(content_type: bytes) -> bytes:
    """The delimiter (`--` + boundary) of a multipart/form-data body, or b"" if the header names none."""
    for param in content_type.split(b";")[1:]:
        key, _, value = param.strip().partition(b"=")
        if key.lower() == b"boundary" and value:
            return b"--" + value.strip(b'"')
    return b""

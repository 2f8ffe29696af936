"""A real demo server in a child process, for tests and benchmarks (never for petlab itself)."""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tests.runs import REPO


@contextlib.contextmanager
def demo_server(registry: str | os.PathLike | None, log_path: str | os.PathLike, *args: str,
                 app: str | os.PathLike | None = None, cwd: str | os.PathLike | None = None, timeout: float = 180.0,
                 env: dict | None = None, python: str | os.PathLike | None = None):
    """Run the demo (demo/app.py, or another copy of it) in a child process on a free local port;
    yields (base URL, process) once /api/health answers. For tests and benchmarks: a real server,
    started and stopped as a user would. `python`: the interpreter (default this one), such as
    a fresh venv's."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = app or REPO / "demo" / "app.py"
    command = [str(python or sys.executable), str(app), "--port", str(port),
               *(["--registry", str(registry)] if registry else []), *args]
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the demo exited with {proc.returncode}: {Path(log_path).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the demo did not answer within {timeout:.0f}s") from None
                time.sleep(0.25)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def demo_process(*args, **kwargs):
    """demo_server, yielding only the base URL."""
    with demo_server(*args, **kwargs) as (url, _):
        yield url


def route_table(routes, prefix: str = "") -> set[tuple[str, str]]:
    """Every (method, path template) an ASGI app's router answers, through mounts and included routers
    ("WEBSOCKET" for a websocket route)."""
    table = set()
    for r in routes:
        if hasattr(r, "original_router"):  # FastAPI's included router
            table |= route_table(r.original_router.routes, prefix + r.include_context.prefix)
        elif hasattr(r, "routes") and not hasattr(r, "endpoint"):  # a mount
            table |= route_table(r.routes, prefix + (r.path if r.path != "/" else ""))
        else:
            table |= {(m, prefix + r.path) for m in (getattr(r, "methods", None) or ["WEBSOCKET"])}
    return table


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A test server's request handler: it writes no access log."""

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def local_server(handler: type[http.server.BaseHTTPRequestHandler]):
    """A real HTTP server for `handler` on 127.0.0.1 at a free port, in a thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@contextlib.contextmanager
def recording_http_server(body: bytes = b""):
    """A real HTTP server on 127.0.0.1 that answers every GET with `body` and records the paths it was asked
    for: whether a server under test fetched a URL. Yields (its base URL, the list of paths)."""
    fetched: list[str] = []

    class Recorder(QuietHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            fetched.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

    with local_server(Recorder) as url:
        yield url, fetched


@contextlib.contextmanager
def comet_stub_server():
    """A real HTTP server on 127.0.0.1 that answers comet_ml's sender (`comet upload`) as Comet's does where
    order matters: `logger/add/run` creates an experiment, and `logger/get/run` (an archive that continues
    one) answers 400 "not found" (comet_ml's NO_WRITE_ACCESS_TO_EXPERIMENT) for an experiment not created
    yet; every other call is accepted. Yields (the URL for COMET_URL_OVERRIDE, the log of ("create"|"get",
    key) and (method, path))."""
    import json

    created, log = set(), []
    accepted = {"is_alive_beat_duration_millis": 60000, "gpu_monitor_interval_millis": 60000,
                "cpu_monitor_interval_millis": 60000, "parameter_update_interval_millis": 60000,
                "msg": "ok", "code": 200, "version": "9.0.0"}

    class Comet(QuietHandler):
        def answer(self, status: int, body: dict):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            path = self.path.split("?")[0]
            handshake = {"runId": "run", "projectId": "project", "focusUrl": "http://127.0.0.1/", "lastOffset": 0}
            if path.endswith("/logger/add/run"):
                key = json.loads(body)["experimentKey"]
                created.add(key)
                log.append(("create", key))
                return self.answer(200, handshake)
            if path.endswith("/logger/get/run"):
                key = json.loads(body)["previousExperiment"]
                log.append(("get", key))
                if key not in created:
                    return self.answer(400, {"sdk_error_code": 90210, "msg": f"experiment {key} not found"})
                return self.answer(200, handshake)
            log.append(("POST", path))
            return self.answer(200, accepted)

        def do_GET(self):  # noqa: N802
            log.append(("GET", self.path.split("?")[0]))
            return self.answer(200, accepted)

    with local_server(Comet) as url:
        yield f"{url}/clientlib/", log

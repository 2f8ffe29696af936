"""A real demo server in a child process, for tests and benchmarks (never for petlab itself)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
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


@contextlib.contextmanager
def recording_http_server(body: bytes = b""):
    """A real HTTP server on 127.0.0.1 that answers every GET with `body` and records the paths it was asked
    for: whether a server under test fetched a URL. Yields (its base URL, the list of paths)."""
    import http.server
    import threading

    fetched: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            fetched.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", fetched
    finally:
        server.shutdown()

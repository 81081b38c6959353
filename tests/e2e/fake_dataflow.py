"""A stateful fake of the Dataflow REST API (v1b3 jobs) on loopback, for the provider's hooks."""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.util
import itertools
import json
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

TERMINAL = {
    "JOB_STATE_DONE",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLED",
    "JOB_STATE_UPDATED",
    "JOB_STATE_DRAINED",
}
HOOK_MODULE = "airflow.providers.google.cloud.hooks.dataflow"
# A process started with this variable set (and SITE on PYTHONPATH) talks to the fake it names.
URL_VARIABLE = "FAKE_DATAFLOW_URL"
SITE = Path(__file__).with_name("fake_dataflow_site")
JOBS_PATH = re.compile(r"^/v1b3/projects/([^/]+)/locations/([^/]+)/jobs(?:/([^/?]+))?$")
PAGE_SIZE = 2


@dataclass
class Request:
    """One request the fake served."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any] | None


@dataclass
class FakeDataflow:
    """In-memory Dataflow jobs of one project and region, served over HTTP on loopback.

    `on_poll(job)` runs when a queued or running job is read with `get`, before the answer: a test
    uses it to do the job's work and to move the job to its end state. A cancelled job stops at
    once, unless `stops_on_cancel` is false: then it stays JOB_STATE_CANCELLING.
    """

    project: str
    region: str
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    on_poll: Callable[[dict[str, Any]], None] | None = None
    stops_on_cancel: bool = True
    url: str = ""
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_job(self, name: str, state: str) -> str:
        """A job as the service would hold it; returns its id."""
        job_id = f"2026-11-30_00_00_00-{next(self._ids):05d}"
        self.jobs[job_id] = {
            "id": job_id,
            "projectId": self.project,
            "location": self.region,
            "name": name,
            "type": "JOB_TYPE_BATCH",
            "currentState": state,
            "createTime": f"2026-11-30T00:00:{len(self.jobs):02d}Z",
        }
        return job_id

    def served(self, method: str) -> list[Request]:
        return [request for request in self.requests if request.method == method]

    def _list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        jobs = list(self.jobs.values())
        if query.get("filter") == ["ACTIVE"]:
            jobs = [job for job in jobs if job["currentState"] not in TERMINAL]
        start = int(query.get("pageToken", ["0"])[0])
        page = {"jobs": jobs[start : start + PAGE_SIZE]}
        if start + PAGE_SIZE < len(jobs):
            page["nextPageToken"] = str(start + PAGE_SIZE)
        return page

    def _get(self, job_id: str) -> dict[str, Any]:
        job = self.jobs[job_id]
        if self.on_poll and job["currentState"] not in TERMINAL:
            self.on_poll(job)
        return job

    def _update(self, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
        job = self.jobs[job_id]
        requested = body.get("requestedState")
        if requested == "JOB_STATE_CANCELLED" and job["currentState"] not in TERMINAL:
            stopped = "JOB_STATE_CANCELLED" if self.stops_on_cancel else "JOB_STATE_CANCELLING"
            job["currentState"] = stopped
        return job

    def handle(self, method: str, url: str, body: bytes) -> tuple[int, dict[str, Any]]:
        parsed = urlparse(url)
        query = parse_qs(parsed.query)
        payload = json.loads(body) if body else None
        with self._lock:
            self.requests.append(Request(method, parsed.path, query, payload))
        match = JOBS_PATH.match(parsed.path)
        if not match or match.group(1) != self.project or match.group(2) != self.region:
            return 404, {"error": {"code": 404, "message": f"no such resource: {parsed.path}"}}
        job_id = match.group(3)
        if job_id and job_id not in self.jobs:
            return 404, {"error": {"code": 404, "message": f"job {job_id} not found"}}
        if method == "GET" and job_id is None:
            return 200, self._list(query)
        if method == "GET":
            return 200, self._get(job_id)
        if method == "PUT" and job_id:
            return 200, self._update(job_id, payload or {})
        return 405, {"error": {"code": 405, "message": f"{method} {parsed.path} not faked"}}


def _handler(fake: FakeDataflow) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, answer = fake.handle(self.command, self.path, self.rfile.read(length))
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = _serve

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


class serving:  # noqa: N801 - used as a context manager, like contextlib's helpers
    """Serve a FakeDataflow on a free loopback port for the duration of a `with` block."""

    def __init__(self, fake: FakeDataflow) -> None:
        self.fake = fake
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))

    def __enter__(self) -> FakeDataflow:
        self.fake.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def dataflow_client(url: str):
    """The discovery client that `DataflowHook.get_conn` returns, on `url` without credentials."""
    import httplib2
    from googleapiclient.discovery import build

    return build(
        "dataflow",
        "v1b3",
        http=httplib2.Http(),
        client_options={"api_endpoint": url},
        cache_discovery=False,
        static_discovery=True,
    )


def point_hook_at(url: str) -> None:
    """Make every `DataflowHook` and `AsyncDataflowHook` of this process talk to the fake at
    `url` (the async hook, whose client speaks gRPC, reads jobs through the REST API)."""
    from airflow.providers.google.cloud.hooks.dataflow import AsyncDataflowHook, DataflowHook

    DataflowHook.get_conn = lambda self: dataflow_client(url)
    AsyncDataflowHook.get_job = _rest_get_job(url)


def _rest_get_job(url: str):
    async def get_job(self, job_id, project_id=None, job_view=None, location=None):
        from google.cloud.dataflow_v1beta3 import Job

        jobs = dataflow_client(url).projects().locations().jobs()
        request = jobs.get(projectId=project_id, location=location, jobId=job_id)
        answer = await asyncio.to_thread(request.execute)
        return Job.from_json(json.dumps(answer), ignore_unknown_fields=True)

    return get_job


def point_hook_once_imported(url: str) -> None:
    """`point_hook_at(url)` as soon as this process imports the hooks' module: processes that
    never use Dataflow do not pay for importing it."""
    if HOOK_MODULE in sys.modules:
        point_hook_at(url)
    else:
        sys.meta_path.insert(0, _AfterImport(HOOK_MODULE, lambda: point_hook_at(url)))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `then()` right after the module `name` is first executed."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        execute = spec.loader.exec_module

        def execute_then(module) -> None:
            execute(module)
            self.then()

        spec.loader.exec_module = execute_then
        return spec


def fake_dataflow_environ(url: str, environ: dict[str, str]) -> dict[str, str]:
    """`environ` for processes whose DataflowHooks, and their children's, talk to the fake at
    `url`: SITE's sitecustomize points them there."""
    path = [str(SITE), *filter(None, [environ.get("PYTHONPATH")])]
    return environ | {URL_VARIABLE: url, "PYTHONPATH": os.pathsep.join(path)}

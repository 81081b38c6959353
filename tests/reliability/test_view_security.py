"""The Image embeddings view as an attacker meets it: users who may not read the DAG are refused,
and a report whose data is full of script runs none of it and cannot act as the signed-in user.

A real API server with Airflow's simple auth manager in multi-team mode: the DAG's bundle belongs
to the team `photos`; `reader` (viewer, of `photos`) may read it and `outsider` (viewer, of
another team) may not. That is how the simple auth manager scopes a DAG to some users; roles alone
(viewer, user, op, admin) grant every DAG or none.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from beam_jobs.image_embeddings.analysis.report import image_href
from image_embeddings_airflow.ui.view import REPORT_HEADERS
from tests.browser import NO_CHROMIUM, chromium_page, click_first_point, has_chromium
from tests.e2e.conftest import AIRFLOW_LOCAL, airflow_local, wait_for
from tests.gcs_emulator import free_port
from tests.hostile_report import injections, write_hostile_day

pytestmark = pytest.mark.slow

DAY = "2026-11-24"
TEAM, OTHER_TEAM = "photos", "archive"
USERS = f"admin:admin,reader:viewer:{TEAM},outsider:viewer:{OTHER_TEAM}"
BUNDLES = [
    {
        "name": "dags-folder",
        "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
        "kwargs": {},
        "team_name": TEAM,
    }
]
VIEW = "/image-embeddings"
# Every route of the view, with what a reader gets from each.
ROUTES = {
    "/": 200,
    "/?page=2": 200,
    f"/days/{DAY}/report": 200,
    "/days/2026-01-01/report": 404,
    "/days/not-a-day/report": 404,
}
DAG_RUNS = "/api/v2/dags/image_embeddings/dagRuns"
# What a script that acts as the signed-in user would send: trigger a DAG run with the session.
TRIGGER_WITH_COOKIE = f"""async () => {{
  try {{
    const answer = await fetch('{DAG_RUNS}', {{
      method: 'POST', credentials: 'include', headers: {{'Content-Type': 'application/json'}},
      body: JSON.stringify({{logical_date: null}}),
    }});
    return answer.status;
  }} catch (error) {{ return error.name; }}
}}"""
REACH_OUT = """() => {
  const attempt = (what) => { try { return String(what()); } catch (error) { return error.name; } };
  return {origin: window.origin, top: attempt(() => top.document.title),
          cookie: attempt(() => document.cookie)};
}"""
LINKS = """() => Array.from(document.querySelectorAll('a, [href], [src]')).map(
  (node) => node.getAttribute('href') || node.getAttribute('xlink:href') || node.getAttribute('src')
    || '')"""


class Canary(BaseHTTPRequestHandler):
    """Counts the requests an injected script would make: any one of them means it ran."""

    hits: list[str]

    def do_GET(self):  # noqa: N802 - http.server's name
        self.hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def canary():
    hits: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Hits", (Canary,), {"hits": hits}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", hits
    server.shutdown()


@dataclass
class ViewServer:
    url: str
    passwords: dict[str, str]
    injections: list[str]

    def token(self, user: str) -> str:
        body = json.dumps({"username": user, "password": self.passwords[user]}).encode()
        request = urllib.request.Request(
            f"{self.url}/auth/token", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())["access_token"]


def status_of(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers, refused.read()


@pytest.fixture(scope="module")
def view_server(airflow_environ, tmp_path_factory, canary) -> ViewServer:
    """Airflow's API server (what serves the view) over an OUTPUT_ROOT holding a hostile day."""
    home = tmp_path_factory.mktemp("view-home")
    texts = injections(canary[0])
    write_hostile_day(str(home / "embeddings" / DAY), texts)
    port = free_port()
    environ = airflow_environ | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__MULTI_TEAM": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": USERS,
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(BUNDLES),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
        "IMAGE_EMBEDDINGS_OUTPUT_ROOT": str(home / "embeddings"),
    }
    for step in (
        ("teams", "create", TEAM),
        ("teams", "create", OTHER_TEAM),
        ("dags", "reserialize"),
    ):
        done = airflow_local(environ, *step, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    log = open(home / "api-server.log", "w")  # noqa: SIM115 - closed at teardown
    server = subprocess.Popen(
        [str(AIRFLOW_LOCAL), "api-server", "--port", str(port)],
        env=environ,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://localhost:{port}"
        passwords = home / "simple_auth_manager_passwords.json.generated"
        wait_for(
            "the API server",
            lambda: status_of(f"{url}/api/v2/monitor/health")[0] == 200 and passwords.exists(),
            180,
            home,
        )
        yield ViewServer(url, json.loads(passwords.read_text()), texts)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_every_route_refuses_a_user_who_may_not_read_the_dag(view_server, observe):
    url = view_server.url
    reader, outsider = view_server.token("reader"), view_server.token("outsider")
    # Airflow's own API draws the same line: the rule is Airflow's, not the view's.
    assert (
        status_of(f"{url}/api/v2/dags/image_embeddings", {"Authorization": f"Bearer {reader}"})[0]
        == 200
    )
    assert (
        status_of(f"{url}/api/v2/dags/image_embeddings", {"Authorization": f"Bearer {outsider}"})[0]
        == 403
    )

    refused = []
    for route, allowed in ROUTES.items():
        for credentials, expected in (
            ({}, 401),
            ({"Authorization": f"Bearer {outsider}"}, 403),
            ({"Cookie": f"_token={outsider}"}, 403),
        ):
            status, _, _ = status_of(url + VIEW + route, credentials)
            observe.unauthorised += 1
            observe.refused += status in (401, 403)
            refused.append((route, credentials and next(iter(credentials)), status, expected))
        status, headers, body = status_of(url + VIEW + route, {"Authorization": f"Bearer {reader}"})
        assert status == allowed, (route, status, body[:300])
        assert status_of(url + VIEW + route, {"Cookie": f"_token={reader}"})[0] == allowed
    assert [row for row in refused if row[2] != row[3]] == []

    days = status_of(url + VIEW + "/", {"Authorization": f"Bearer {reader}"})[2].decode()
    assert f"<td>{DAY}</td>" in days and f'href="days/{DAY}/report"' in days
    _, headers, _ = status_of(
        f"{url}{VIEW}/days/{DAY}/report", {"Authorization": f"Bearer {reader}"}
    )
    assert {name: headers.get(name) for name in REPORT_HEADERS} == REPORT_HEADERS


def _log_in(page, url: str, user: str, password: str) -> None:
    page.goto(f"{url}/auth/login")
    page.locator("input[name=username]").fill(user)
    page.locator("input[name=password]").fill(password)
    page.locator("button[type=submit]").click()
    page.wait_for_url(lambda address: "/auth/login" not in address)


def _hover_and_click_a_point(page, report) -> str:
    """Hover the map's first point, as a mouse would, and click it; return the URI it names."""
    from playwright.sync_api import expect

    picked = click_first_point(page, report)
    shown = picked.inner_text()
    assert shown.startswith(f"gs://photos/{DAY}/"), shown
    expect(picked).to_have_attribute("href", image_href(shown))
    return shown


def _runs(view_server) -> int:
    token = {"Authorization": f"Bearer {view_server.token('admin')}"}
    return json.loads(status_of(view_server.url + DAG_RUNS, token)[2])["total_entries"]


@pytest.mark.skipif(not has_chromium(), reason=NO_CHROMIUM)
def test_a_report_full_of_script_injections_runs_none_of_them(
    view_server, canary, tmp_path, observe
):
    pytest.importorskip("playwright")
    from playwright.sync_api import expect

    # The report (5 MB of inline script) renders slowly on a busy two-core machine.
    expect.set_options(timeout=30_000)
    url, (_, hits) = view_server.url, canary
    heading = f"Image embeddings of {DAY}"
    with chromium_page(tmp_path / "profile") as page:
        # The map's images are gs:// objects: their console links are answered here, offline.
        page.context.route(
            "https://storage.cloud.google.com/**", lambda route: route.fulfill(body="an image")
        )
        _log_in(page, url, "admin", view_server.passwords["admin"])

        # Inside the Airflow UI: the list, then the report in the UI's frame.
        page.goto(f"{url}/dags")
        page.get_by_role("link", name="Image embeddings").click()
        page.frame_locator("iframe").get_by_role("link", name="report").click()
        framed = page.frame_locator("iframe")
        expect(framed.get_by_role("heading", name=heading)).to_be_visible()
        _hover_and_click_a_point(page, framed)
        frame = next(frame for frame in page.frames if frame.url.endswith(f"{DAY}/report"))
        reach = frame.evaluate(REACH_OUT)
        runs = _runs(view_server)
        from_the_report = frame.evaluate(TRIGGER_WITH_COOKIE)
        framed_links = frame.evaluate(LINKS)
        assert _runs(view_server) == runs, from_the_report
        # The same request from the UI's own page does trigger a run: the probe is a real attack.
        from_the_ui = page.evaluate(TRIGGER_WITH_COOKIE)
        assert from_the_ui == 200, from_the_ui
        assert _runs(view_server) == runs + 1

        # The report on its own page: a click opens the image in a new tab.
        answer = page.goto(f"{url}{VIEW}/days/{DAY}/report")
        assert (
            answer.headers["content-security-policy"] == REPORT_HEADERS["Content-Security-Policy"]
        )
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
        with page.expect_popup() as popup:
            shown = _hover_and_click_a_point(page, page)
        assert popup.value.url == image_href(shown)
        own_reach = page.evaluate(REACH_OUT)
        own_links = page.evaluate(LINKS)
        page.wait_for_timeout(1000)

    observe.injections += 2 * len(view_server.injections)  # each one in every field, two pages
    observe.injections_run += len(hits)
    observe.unauthorised += 1
    observe.refused += from_the_report != 200
    assert hits == []
    assert reach == {"origin": "null", "top": "SecurityError", "cookie": "SecurityError"}
    assert own_reach["origin"] == "null" and own_reach["cookie"] == "SecurityError"
    for link in framed_links + own_links:
        assert not link.strip().lower().startswith("javascript:"), link

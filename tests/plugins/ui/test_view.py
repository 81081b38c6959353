"""The Image embeddings view: days listed from OUTPUT_ROOT, reports served, to Airflow users."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from beam_jobs.image_embeddings.contract import DRIFT_NAME, REPORT_HTML_NAME, SUCCESS_MARKER
from image_embeddings_airflow import storage
from image_embeddings_airflow.dag.validation import REPORT_NAME
from image_embeddings_airflow.ui.days import (
    STATUS_EMBEDDED,
    STATUS_INCOMPLETE,
    STATUS_INVALID,
    STATUS_REPORTED,
    day_names,
    summarize_day,
)
from image_embeddings_airflow.ui.view import (
    DAYS_SHOWN,
    REPORT_HEADERS,
    create_app,
    signed_in_reader,
)

REPORT = b"<!doctype html><title>the report of 2026-11-28</title>"


def write_day(root: str, day: str, images: int, failed: int) -> str:
    folder = f"{root}/{day}"
    marker = {"images": images, "embedded": images - failed, "failed": failed}
    storage.write_json(f"{folder}/{SUCCESS_MARKER}", marker)
    return folder


@pytest.fixture
def root(tmp_path, monkeypatch) -> str:
    """OUTPUT_ROOT with a reported day, a day that failed validation, an unfinished day, a stray
    folder, and a report.html just outside the root."""
    root = tmp_path / "embeddings"
    reported = write_day(str(root), "2026-11-28", images=40, failed=2)
    storage.write_bytes(f"{reported}/{REPORT_HTML_NAME}", REPORT)
    storage.write_json(f"{reported}/{DRIFT_NAME}", {"verdict": "stable"})
    invalid = write_day(str(root), "2026-11-27", images=10, failed=5)
    storage.write_json(f"{invalid}/{REPORT_NAME}", {"ok": False})
    changed = write_day(str(root), "2026-11-26", images=3, failed=0)
    marker = storage.read_json(f"{changed}/{SUCCESS_MARKER}")
    marker["previous_fingerprint"] = {"day": "2026-11-20", "fingerprint": "old", "changed": True}
    storage.write_json(f"{changed}/{SUCCESS_MARKER}", marker)
    (root / "2026-11-25").mkdir()
    (root / "scratch").mkdir()
    storage.write_bytes(str(tmp_path / REPORT_HTML_NAME), b"outside the output root")
    monkeypatch.setenv("IMAGE_EMBEDDINGS_OUTPUT_ROOT", str(root))
    return str(root)


@pytest.fixture
def signed_in(root) -> TestClient:
    """A client of the view whose requests count as an allowed Airflow user's."""
    app = create_app()
    app.dependency_overrides[signed_in_reader] = lambda: "reader"
    return TestClient(app)


def test_days_are_listed_newest_first_with_their_state(root):
    days = [summarize_day(root, day) for day in day_names(root)]

    assert [(day.day, day.status) for day in days] == [
        ("2026-11-28", STATUS_REPORTED),
        ("2026-11-27", STATUS_INVALID),
        ("2026-11-26", STATUS_EMBEDDED),
        ("2026-11-25", STATUS_INCOMPLETE),
    ]
    assert days[0].failure_rate == pytest.approx(0.05) and days[0].drift == "stable"
    assert days[3].failure_rate is None
    assert [day.model_change for day in days] == [
        None,
        None,
        "changed since 2026-11-20 (was old)",
        None,
    ]


def test_the_days_page_links_each_report(signed_in):
    page = signed_in.get("/").text

    assert '<a href="days/2026-11-28/report">report</a>' in page
    assert page.count("/report") == 1
    assert '<td>5.0%</td><td class="text">stable</td><td class="text">—</td>' in page
    assert '<td class="text">changed since 2026-11-20 (was old)</td>' in page
    assert "validation failed" in page and "50.0%" in page
    assert "scratch" not in page


def test_a_day_report_is_served(signed_in):
    answer = signed_in.get("/days/2026-11-28/report")

    assert answer.status_code == 200
    assert answer.content == REPORT
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["content-security-policy"] == "sandbox allow-scripts allow-popups"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert REPORT_HEADERS["Content-Security-Policy"] == "sandbox allow-scripts allow-popups"


@pytest.fixture
def many_days(tmp_path, monkeypatch) -> tuple[list[str], list[str]]:
    """200 finished days under OUTPUT_ROOT, newest first, and every storage call's URI (a spy
    that calls through)."""
    root = str(tmp_path / "many")
    days = [
        f"{2026 - index // 300}-{1 + index // 28 % 10:02d}-{1 + index % 28:02d}"
        for index in range(200)
    ]
    for day in days:
        write_day(root, day, images=10, failed=1)
    monkeypatch.setenv("IMAGE_EMBEDDINGS_OUTPUT_ROOT", root)
    read: list[str] = []
    for name in ("subfolders", "list_files", "read_json", "exists", "read_bytes"):
        real = getattr(storage, name)

        def recorded(uri, *args, _real=real, **kwargs):
            read.append(uri)
            return _real(uri, *args, **kwargs)

        monkeypatch.setattr(storage, name, recorded)
    return sorted(days, reverse=True), read


def days_read(uris: list[str]) -> set[str]:
    """The day folders that storage calls went into (the root's own listing is no day's)."""
    return {uri.split("/many/")[1].split("/")[0] for uri in uris if "/many/" in uri}


def test_a_page_of_days_reads_only_the_days_it_shows(many_days):
    days, read = many_days
    client = TestClient(create_app())
    client.app.dependency_overrides[signed_in_reader] = lambda: "reader"

    first = client.get("/").text
    first_read = days_read(read)
    read.clear()
    last = client.get("/?page=3").text
    last_read = days_read(read)

    assert first_read == set(days[:DAYS_SHOWN])
    assert last_read == set(days[2 * DAYS_SHOWN :])
    assert first.count("<tr><td>") == DAYS_SHOWN and days[0] in first and days[90] not in first
    assert "Days 1-90 of 200" in first and '<a href="?page=2">older days</a>' in first
    assert "newer days" not in first
    assert last.count("<tr><td>") == 20 and days[-1] in last
    assert '<a href="?page=2">newer days</a>' in last and "older days" not in last
    assert "No days on page 4." in client.get("/?page=4").text
    assert client.get("/?page=0").status_code == 422


@pytest.mark.parametrize(
    "path",
    [
        "/days/../report",
        "/days/%2e%2e/report",
        "/days/..%2F..%2Freport.html/report",
        "/days/2026-11-28%2F..%2F../report",
        "/days/%2Fetc%2Fpasswd/report",
        "/days/2026-13-01/report",
        "/days/scratch/report",
        "/days/2026-11-26/report",
    ],
)
def test_only_reports_of_days_inside_the_root_are_served(signed_in, path):
    answer = signed_in.get(path)

    assert answer.status_code == 404
    assert b"outside" not in answer.content


def test_a_bad_day_name_is_named_in_the_refusal(signed_in):
    answer = signed_in.get("/days/..2026-11-28/report")

    assert answer.status_code == 404
    assert "YYYY-MM-DD" in answer.json()["detail"]


@pytest.fixture
def auth_manager(tmp_path, monkeypatch):
    """Airflow's configured auth manager (the simple one), as the API server initialises it."""
    from airflow.api_fastapi.app import init_auth_manager, purge_cached_app

    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(tmp_path / "pw"))
    yield init_auth_manager()
    purge_cached_app()


@pytest.mark.parametrize("path", ["/", "/days/2026-11-28/report"])
def test_requests_without_a_valid_airflow_token_are_refused(root, auth_manager, path):
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    client = TestClient(create_app())
    user = SimpleAuthManagerUser(username="someone", role="admin")
    expired = auth_manager.generate_jwt(user, expiration_time_in_seconds=-60)

    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer forged"}).status_code == 403
    assert client.get(path, cookies={"_token": "forged"}).status_code == 403
    # A valid token is checked against Airflow's database: the browser test signs in for real.

"""A real Airflow (SQLite, LocalExecutor) runs the DAG: a REST-triggered day and a backfill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import AIRFLOW_LOCAL, SMALL_MODEL, airflow_local, write_day
from tests.e2e.outputs import check_day_outputs
from tests.gcs_emulator import free_port

pytestmark = pytest.mark.slow

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
TRIGGERED_DAY = "2026-11-10"
BACKFILL_DAYS = ("2026-11-05", "2026-11-06", "2026-11-07")
RUNS_TIMEOUT_S = 1500


class AirflowApi:
    """The REST API of the running Airflow, as the admin user (JWT from /auth/token)."""

    def __init__(self, url: str, password: str) -> None:
        self.url = url
        self.token = self.request(
            "POST", "/auth/token", {"username": "admin", "password": password}
        )["access_token"]

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if getattr(self, "token", None):
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode() if body is not None else None,
            headers=headers,
            method=method,
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")


def _wait_for(what: str, check, timeout_s: float, logs: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, KeyError, ValueError):
            result = None
        if result:
            return result
        time.sleep(2)
    tails = "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(logs.glob("*.log"))
    )
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@pytest.fixture(scope="module")
def airflow(airflow_environ, tmp_path_factory):
    """Airflow's four long-running components in a fresh home; yields (API, environment, data)."""
    home = tmp_path_factory.mktemp("scheduler-home")
    data = tmp_path_factory.mktemp("scheduler-data")
    port = free_port()
    environ = airflow_environ | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
        # Other Airflows on this machine may hold the default log server ports.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "IMAGE_EMBEDDINGS_INPUT_ROOT": str(data / "images"),
        "IMAGE_EMBEDDINGS_OUTPUT_ROOT": str(data / "embeddings"),
    }
    migrated = airflow_local(environ, "version")
    assert migrated.returncode == 0, migrated.stderr
    processes = []
    for component in COMPONENTS:
        log = open(home / f"{component}.log", "w")  # noqa: SIM115 - closed at teardown
        processes.append(
            (
                subprocess.Popen(
                    [str(AIRFLOW_LOCAL), component],
                    env=environ,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
                log,
            )
        )
    try:
        url = f"http://localhost:{port}"
        passwords = home / "simple_auth_manager_passwords.json.generated"
        _wait_for(
            "the API server",
            lambda: (
                urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5).status == 200
                and passwords.exists()
            ),
            180,
            home,
        )
        api = AirflowApi(url, json.loads(passwords.read_text())["admin"])
        _wait_for(
            "the DAG to be parsed",
            lambda: api.request("GET", "/api/v2/dags/image_embeddings")["dag_id"],
            180,
            home,
        )
        yield api, environ, data, home
    finally:
        for process, _ in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process, log in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()


def _runs(api: AirflowApi) -> list[dict]:
    return api.request("GET", "/api/v2/dags/image_embeddings/dagRuns?limit=100")["dag_runs"]


def test_a_bad_date_in_the_conf_is_refused_before_any_run(airflow):
    api, *_ = airflow
    with pytest.raises(urllib.error.HTTPError) as refused:
        api.request(
            "POST",
            "/api/v2/dags/image_embeddings/dagRuns",
            {"logical_date": None, "conf": {"date": "2026-02-30"}},
        )
    assert refused.value.code == 400
    assert "date" in refused.value.read().decode()


def _backfill(environ: dict[str, str]) -> None:
    """`airflow backfill create` over BACKFILL_DAYS, as a user types it."""
    for _ in range(5):
        done = airflow_local(
            environ,
            *("backfill", "create", "--dag-id", "image_embeddings"),
            *("--from-date", BACKFILL_DAYS[0], "--to-date", BACKFILL_DAYS[-1]),
        )
        if done.returncode == 0:
            return
        # SQLite refuses a write at once when two writers' locks would deadlock; the command
        # then removes its partial backfill, and trying again is what a user would do.
        if "database is locked" not in done.stderr:
            break
        time.sleep(5)
    raise AssertionError(done.stdout + done.stderr)


def test_a_triggered_day_and_a_backfill_all_succeed(airflow):
    api, environ, data, home = airflow
    days = {
        day: write_day(str(data / "images"), day, good=6) for day in (TRIGGERED_DAY, *BACKFILL_DAYS)
    }
    _backfill(environ)
    api.request("PATCH", "/api/v2/dags/image_embeddings", {"is_paused": False})
    triggered = api.request(
        "POST",
        "/api/v2/dags/image_embeddings/dagRuns",
        {"logical_date": None, "conf": {"date": TRIGGERED_DAY}},
    )

    def all_finished():
        runs = _runs(api)
        backfilled = [run for run in runs if run["run_type"] == "backfill"]
        if len(backfilled) < len(BACKFILL_DAYS):
            return None
        if any(run["state"] not in ("success", "failed") for run in runs):
            return None
        return runs

    runs = _wait_for("every run to finish", all_finished, RUNS_TIMEOUT_S, home)

    assert {run["dag_run_id"]: run["state"] for run in runs} == {
        run["dag_run_id"]: "success" for run in runs
    }
    (manual,) = [run for run in runs if run["dag_run_id"] == triggered["dag_run_id"]]
    assert manual["logical_date"] is None
    assert manual["conf"] == {"date": TRIGGERED_DAY}
    assert sorted(
        run["logical_date"][:10] for run in runs if run["run_type"] == "backfill"
    ) == list(BACKFILL_DAYS)
    for day, (good, bad) in days.items():
        check_day_outputs(str(data / "embeddings" / day), good, bad, *SMALL_MODEL)

"""A real Airflow (SQLite, LocalExecutor) runs the DAG: a REST-triggered day and a backfill."""

from __future__ import annotations

import time
import urllib.error

import pytest

from beam_jobs.image_embeddings.contract import DRIFTED, NO_HISTORY, STABLE, TOO_FEW
from tests.e2e.conftest import SMALL_MODEL, AirflowApi, airflow_local, wait_for, write_day
from tests.e2e.outputs import check_day_outputs

pytestmark = pytest.mark.slow

TRIGGERED_DAY = "2026-11-10"
# Across IMAGE_EMBEDDINGS_START_DATE (2026-11-01): a backfill runs every day of its range.
BACKFILL_DAYS = ("2026-10-31", "2026-11-01", "2026-11-02")
RUNS_TIMEOUT_S = 1500


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

    runs = wait_for("every run to finish", all_finished, RUNS_TIMEOUT_S, home)

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
    events = api.request("GET", "/api/v2/assets/events?limit=100")["asset_events"]
    # Once per day; other modules sharing this Airflow may publish days of their own.
    published = [event["extra"]["day"] for event in events]
    assert sorted(day for day in published if day in days) == sorted(days)
    extras = {event["extra"]["day"]: event["extra"] for event in events}
    for day, (good, bad) in days.items():
        extra = extras[day]
        assert extra["report"] == str(data / "embeddings" / day / "report.html")
        assert (extra["embedded"], extra["failed"]) == (len(good), len(bad))
        assert 0 <= extra["reused"] <= len(good)
        assert set(extra["duplicates"]) == {"exact", "near", "images"}
        assert extra["drift"]["verdict"] in (DRIFTED, STABLE, NO_HISTORY, TOO_FEW)

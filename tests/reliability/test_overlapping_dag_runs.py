"""Two DAG runs of one day at once, through a real scheduler: one writes at a time, none is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from beam_jobs.image_embeddings.contract import LEASE_NAME
from image_embeddings_airflow import storage
from tests.e2e.conftest import (
    SMALL_MODEL,
    AirflowApi,
    wait_for,
    write_day,
)
from tests.e2e.outputs import check_day_outputs

pytestmark = pytest.mark.slow

DAY = "2026-11-20"
RUNS_TIMEOUT_S = 1500


def _claim_logs(home: Path, run_id: str) -> str:
    """The text of every claim_day attempt log of one run."""
    return "".join(
        path.read_text(errors="replace")
        for path in (home / "logs").rglob("*.log")
        if "task_id=claim_day" in path.parts and f"run_id={run_id}" in path.parts
    )


def _finished(api: AirflowApi, run_ids: list[str]) -> list[dict] | None:
    runs = [api.request("GET", f"/api/v2/dags/image_embeddings/dagRuns/{rid}") for rid in run_ids]
    return runs if all(run["state"] in ("success", "failed") for run in runs) else None


def test_two_runs_of_one_day_at_once_leave_it_complete(airflow, observe):
    observe.area = "one run a day"
    api, environ, data, home = airflow
    good, bad = write_day(str(data / "images"), DAY, good=6, bad=1)
    api.request("PATCH", "/api/v2/dags/image_embeddings", {"is_paused": False})
    run_ids = [
        api.request(
            "POST",
            "/api/v2/dags/image_embeddings/dagRuns",
            {"logical_date": None, "conf": {"date": DAY}},
        )["dag_run_id"]
        for _ in range(2)
    ]

    runs = wait_for("both runs to finish", lambda: _finished(api, run_ids), RUNS_TIMEOUT_S, home)

    observe.overlapping_runs += 1
    assert [run["state"] for run in runs] == ["success", "success"]
    waited = [
        run_id
        for run_id in run_ids
        if "Waiting: day folder" in _claim_logs(home, run_id)
        and "is being written by dag:image_embeddings:" in _claim_logs(home, run_id)
    ]
    assert len(waited) == 1, "the runs overlapped: one waited for the other"
    output = str(data / "embeddings" / DAY)
    check_day_outputs(output, good, bad, *SMALL_MODEL)
    assert storage.read_json(f"{output}/{LEASE_NAME}")["released_at"], "each run gave the day back"

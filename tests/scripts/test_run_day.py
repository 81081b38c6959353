"""`make run`'s own parts: the date it accepts, and what it says when a task fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from run_day import describe_day, describe_failure, failed_tasks  # noqa: E402

# Lines of a real `airflow dags test` log (timestamps and most fields cut).
FAILED_RUN_LOG = [
    "[info     ] [DAG TEST] starting task_id=resolve_run map_index=-1 [airflow.sdk]",
    "[info     ] Task started                   [airflow.api_fastapi.execution_api.routes]",
    "[error    ] Task failed with exception     [task] loc=task_runner.py:1639",
    "Traceback (most recent call last):",
    '  File "/repo/plugins/image_embeddings_airflow/dag/tasks.py", line 45, in resolve_run',
    '    raise AirflowFailException(f"refused before anything ran: {error}") from None',
    "airflow.sdk.exceptions.AirflowFailException: refused before anything ran: "
    "IMAGE_EMBEDDINGS_RUNNER: runner must be one of DirectRunner, DataflowRunner, got 'Flink'",
    "[info     ] [DAG TEST] end task task_id=resolve_run map_index=-1 [airflow.sdk]",
    "[info     ] [DAG TEST] starting task_id=release_day map_index=-1 [airflow.sdk]",
    "[info     ] DagRun Finished: dag_id=image_embeddings, state=failed",
]


def test_a_failed_task_is_named_with_its_error():
    assert failed_tasks(FAILED_RUN_LOG) == [
        (
            "resolve_run",
            "airflow.sdk.exceptions.AirflowFailException: refused before anything ran: "
            "IMAGE_EMBEDDINGS_RUNNER: runner must be one of DirectRunner, DataflowRunner, "
            "got 'Flink'",
        )
    ]


def test_a_run_stopped_by_airflow_itself_says_no_task_failed(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("[info     ] DagRun Finished: dag_id=image_embeddings, state=failed\n")
    assert describe_failure(log) == ["    no task failed: Airflow itself stopped the run"]


def test_a_day_without_a_marker_says_nothing_was_embedded(tmp_path):
    (line,) = describe_day(str(tmp_path), "2026-10-01")
    assert "nothing embedded" in line
    assert str(tmp_path / "2026-10-01") in line


def test_a_date_that_is_no_calendar_day_is_refused_with_why():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_day.py"), "2026-02-30"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "date must be a calendar day written YYYY-MM-DD" in done.stderr
    assert "'2026-02-30'" in done.stderr


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_says_any_day_may_be_run(flag):
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_day.py"), flag],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "before IMAGE_EMBEDDINGS_START_DATE too" in done.stdout

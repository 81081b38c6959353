"""A DAG run killed, or timed out, while `wait` waits for its Dataflow job (the fake Dataflow
REST API): the job is cancelled and the day's lease is free for the next run."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowSensorTimeout

from image_embeddings_airflow.dag import tasks as dag_tasks
from image_embeddings_airflow.dag.dataflow import job_state
from image_embeddings_airflow.dag.tasks import dag_holder, resolve_run
from tests.dags.conftest import dataflow_api, google_connection  # noqa: F401
from tests.dags.test_dataflow import NAME, _in_dag
from tests.dags.test_run_plan import DATAFLOW, NOV_28

HOLDER = dag_holder("image_embeddings", "manual__2026-11-28")


def _waiting(dataflow_api, tmp_path):  # noqa: F811
    """A run that holds its day, its job running on Dataflow, and its `wait` task."""
    from image_embeddings_airflow.dag.operators import WaitForEmbeddingsSensor

    plan = resolve_run({}, NOV_28, DATAFLOW) | {"output_dir": str(tmp_path / "2026-11-28")}
    token = dag_tasks.claim_day(plan, HOLDER)
    job_id = dataflow_api.add_job(NAME, "JOB_STATE_RUNNING")
    wait = _in_dag(
        WaitForEmbeddingsSensor, task_id="wait", plan=plan, job_id=job_id, lease_token=token
    )
    assert wait.poke(context={}) is False
    # The teardown, had it run now: the job still writes the day, which stays held.
    assert dag_tasks.release_day(plan, HOLDER, token, job_state(plan, job_id)) is False
    return plan, token, job_id, wait


def _day_is_free(plan) -> bool:
    return dag_tasks.claim_day(plan, dag_holder("image_embeddings", "next-run")) is not None


def test_a_kill_during_wait_cancels_the_job_and_frees_the_day(
    dataflow_api,  # noqa: F811
    tmp_path,
    observe,
):
    observe.area = "one run a day"
    plan, token, job_id, wait = _waiting(dataflow_api, tmp_path)

    wait.on_kill()  # what Airflow calls on the task when the run is killed or marked failed
    state = job_state(plan, job_id)
    released = dag_tasks.release_day(plan, HOLDER, token, state)

    assert state == "JOB_STATE_CANCELLED"
    assert released
    assert _day_is_free(plan)
    observe.killed_waits += 1


def test_a_wait_that_times_out_cancels_the_job_and_frees_the_day(
    dataflow_api,  # noqa: F811
    tmp_path,
    observe,
):
    observe.area = "one run a day"
    plan, token, job_id, wait = _waiting(dataflow_api, tmp_path)

    with pytest.raises(AirflowSensorTimeout):
        # How the task runner resumes a task whose trigger ran past its timeout.
        wait.resume_execution("__fail__", {"error": "Trigger timeout"}, context={})
    state = job_state(plan, job_id)

    assert state == "JOB_STATE_CANCELLED"
    assert dag_tasks.release_day(plan, HOLDER, token, state)
    assert _day_is_free(plan)
    observe.killed_waits += 1

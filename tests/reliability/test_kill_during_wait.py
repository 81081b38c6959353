"""A DAG run killed, or timed out, while `wait` waits for its Dataflow job (the fake Dataflow
REST API): the job is cancelled and the day's lease is free for the next run."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowSensorTimeout

from beam_jobs.image_embeddings.contract import join
from image_embeddings_airflow.dag import tasks as dag_tasks
from image_embeddings_airflow.dag.dataflow import job_state
from image_embeddings_airflow.dag.launch import dataflow_job_name
from image_embeddings_airflow.dag.tasks import dag_holder, resolve_run
from tests.dags.conftest import dataflow_api, google_connection  # noqa: F401
from tests.dags.test_dataflow import NAME, _in_dag
from tests.dags.test_run_plan import DATAFLOW, NOV_28
from tests.e2e.conftest import wait_for, write_day

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
    assert dag_tasks.release_day(plan, HOLDER, token, {"embed": job_state(plan, job_id)}) is False
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
    released = dag_tasks.release_day(plan, HOLDER, token, {"embed": state})

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
    assert dag_tasks.release_day(plan, HOLDER, token, {"embed": state})
    assert _day_is_free(plan)
    observe.killed_waits += 1


# A day of its own: the shared Airflow runs other tests' days too.
KILLED_DAY = "2026-11-22"


def cancel_requests(fake, job_id: str) -> list[dict]:
    return [request.body for request in fake.served("PUT") if request.path.endswith(job_id)]


def job_reads(fake, job_id: str) -> list:
    return [request for request in fake.served("GET") if request.path.endswith(job_id)]


def ended_state(api, run_path: str) -> str | None:
    state = api.request("GET", run_path)["state"]
    return state if state in ("success", "failed") else None


@pytest.mark.slow
def test_marking_the_run_failed_while_wait_is_deferred_cancels_the_job_and_frees_the_day(
    airflow,
    fake_dataflow,
    gcs_emulator,
    observe,
    monkeypatch,
):
    """Under a real scheduler and triggerer: the day's job runs on the fake Dataflow, `embed`
    attaches to it and `wait` defers on it; then a user marks the run failed. The job takes a
    while to stop, as on Dataflow: `release_day` runs meanwhile and keeps the day held."""
    observe.area = "one run a day"
    api, _, _, home = airflow
    roots = {
        "input_root": f"gs://{gcs_emulator}/killed-wait/images",
        "output_root": f"gs://{gcs_emulator}/killed-wait/embeddings",
    }
    write_day(roots["input_root"], KILLED_DAY, good=2)
    job_id = fake_dataflow.add_job(
        dataflow_job_name("image_embeddings", KILLED_DAY), "JOB_STATE_RUNNING"
    )
    monkeypatch.setattr(fake_dataflow, "stops_on_cancel", False)
    api.request("PATCH", "/api/v2/dags/image_embeddings", {"is_paused": False})
    conf = {"date": KILLED_DAY, "runner": "DataflowRunner", "engine": "tensorflow", **roots}
    run = api.request(
        "POST", "/api/v2/dags/image_embeddings/dagRuns", {"logical_date": None, "conf": conf}
    )
    run_path = f"/api/v2/dags/image_embeddings/dagRuns/{run['dag_run_id']}"

    def task_state(task_id: str) -> str | None:
        return api.request("GET", f"{run_path}/taskInstances/{task_id}")["state"]

    wait_for("`wait` to defer on the job", lambda: task_state("wait") == "deferred", 600, home)
    # A trigger removed before the triggerer has started it is never killed: wait until it has
    # read the job once, after the sensor's own read.
    wait_for(
        "the trigger to read the job", lambda: len(job_reads(fake_dataflow, job_id)) > 1, 120, home
    )
    api.request("PATCH", run_path, {"state": "failed"})
    wait_for(
        "the job's cancellation and `release_day` to have run",
        lambda: cancel_requests(fake_dataflow, job_id) and task_state("release_day") == "success",
        120,
        home,
    )
    kept = api.request("GET", f"{run_path}/taskInstances/release_day/xcomEntries/return_value")
    fake_dataflow.jobs[job_id]["currentState"] = "JOB_STATE_CANCELLED"  # the job has stopped

    next_run = {"output_dir": join(roots["output_root"], KILLED_DAY)}
    wait_for(
        "the day to be free",
        lambda: dag_tasks.claim_day(next_run, dag_holder("image_embeddings", "next-run")),
        60,
        home,
    )
    ended = wait_for("the run to end", lambda: ended_state(api, run_path), 120, home)

    assert cancel_requests(fake_dataflow, job_id) == [{"requestedState": "JOB_STATE_CANCELLED"}]
    assert kept["value"] is False  # the job was still stopping: the trigger freed the day
    tasks = ("wait", "validate", "analyse", "summarise")
    assert {task: task_state(task) for task in tasks} == {
        "wait": "failed",
        "validate": "skipped",
        "analyse": "skipped",
        "summarise": "skipped",
    }
    # Airflow 3.3 runs the teardown of a run marked failed and then ends the run by its other
    # leaves, which the marking skipped (apache/airflow#45530): the run ends green.
    assert ended == "success"
    observe.killed_waits += 1

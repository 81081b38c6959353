"""Reuse on retry, fail fast, cancel on kill: against a fake Dataflow REST API behind the hook."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time

import pytest

from image_embeddings_airflow.dag import dataflow
from image_embeddings_airflow.dag.dataflow import (
    DataflowJobWaitTrigger,
    JobStillStopping,
    find_reusable_job,
    reusable_job,
)
from image_embeddings_airflow.dag.tasks import resolve_run
from tests.dags.conftest import PROJECT, REGION
from tests.dags.test_run_plan import DATAFLOW, NOV_28

NAME = "image-embeddings-20261128"
HOLDER = "dag:image_embeddings:manual__2026-11-28"


def _job(job_id, state, name=NAME, created="2026-11-28T01:00:00Z"):
    return {"id": job_id, "name": name, "currentState": state, "createTime": created}


def test_the_newest_queued_or_running_job_of_the_exact_name_is_reused():
    jobs = [
        _job("old", "JOB_STATE_RUNNING", created="2026-11-28T01:00:00Z"),
        _job("new", "JOB_STATE_QUEUED", created="2026-11-28T02:00:00Z"),
        _job("other", "JOB_STATE_RUNNING", name=NAME + "-copy", created="2026-11-28T03:00:00Z"),
        _job("done", "JOB_STATE_DONE", created="2026-11-28T04:00:00Z"),
    ]
    assert reusable_job(jobs, NAME)["id"] == "new"


@pytest.mark.parametrize(
    "state", ["JOB_STATE_DONE", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_DRAINED"]
)
def test_an_ended_job_is_not_reused(state):
    assert reusable_job([_job("ended", state)], NAME) is None


@pytest.mark.parametrize("state", ["JOB_STATE_CANCELLING", "JOB_STATE_DRAINING"])
def test_a_stopping_job_makes_the_launch_retry_later(state):
    with pytest.raises(JobStillStopping, match=f"{NAME} \\(stopping\\) is {state}"):
        reusable_job([_job("stopping", state)], NAME)


def test_the_hook_lists_active_jobs_over_every_page(dataflow_api):
    from airflow.providers.google.cloud.hooks.dataflow import DataflowHook

    dataflow_api.add_job(NAME, "JOB_STATE_DONE")
    dataflow_api.add_job("image-embeddings-20261127", "JOB_STATE_RUNNING")
    dataflow_api.add_job(NAME + "-copy", "JOB_STATE_RUNNING")
    dataflow_api.add_job("image-embeddings-20261129", "JOB_STATE_PENDING")
    running = dataflow_api.add_job(NAME, "JOB_STATE_RUNNING")

    job = find_reusable_job(DataflowHook(), NAME, PROJECT, REGION)

    assert job["id"] == running
    lists = dataflow_api.served("GET")
    assert len(lists) == 2  # four active jobs, two a page
    assert all(request.query["filter"] == ["ACTIVE"] for request in lists)
    assert all(request.query["name"] == [NAME] for request in lists)


def test_no_active_job_means_a_new_launch(dataflow_api):
    from airflow.providers.google.cloud.hooks.dataflow import DataflowHook

    dataflow_api.add_job(NAME, "JOB_STATE_FAILED")
    assert find_reusable_job(DataflowHook(), NAME, PROJECT, REGION) is None


def _in_dag(operator_class, **kwargs):
    from airflow.sdk import DAG

    with DAG("image_embeddings", schedule=None):
        operator = operator_class(**kwargs)
    operator.render_template_fields(context={"run_id": "manual__2026-11-28"})
    return operator


def _sensor(job_id):
    from image_embeddings_airflow.dag.operators import WaitForEmbeddingsSensor

    return _in_dag(
        WaitForEmbeddingsSensor,
        task_id="wait",
        plan=resolve_run({}, NOV_28, DATAFLOW),
        job_id=job_id,
    )


def test_the_sensor_waits_while_the_job_runs_and_passes_when_done(dataflow_api):
    job_id = dataflow_api.add_job(NAME, "JOB_STATE_RUNNING")
    sensor = _sensor(job_id)
    assert (sensor.project_id, sensor.location) == (PROJECT, REGION)
    assert sensor.poke(context={}) is False
    dataflow_api.jobs[job_id]["currentState"] = "JOB_STATE_DONE"
    assert sensor.poke(context={}) is True


@pytest.mark.parametrize("state", ["JOB_STATE_FAILED", "JOB_STATE_CANCELLED"])
def test_the_sensor_fails_at_once_on_a_failed_job_with_its_console_link(dataflow_api, state):
    from airflow.sdk.exceptions import AirflowFailException

    job_id = dataflow_api.add_job(NAME, state)
    with pytest.raises(AirflowFailException) as failed:
        _sensor(job_id).poke(context={})
    message = str(failed.value)
    assert f"Dataflow job {job_id} ended {state}, not JOB_STATE_DONE" in message
    assert (
        f"https://console.cloud.google.com/dataflow/jobs/{REGION}/{job_id}?project={PROJECT}"
        in message
    )
    assert "clear 'embed'" in message


def test_killing_the_sensor_cancels_the_job(dataflow_api):
    job_id = dataflow_api.add_job(NAME, "JOB_STATE_RUNNING")
    _sensor(job_id).on_kill()
    assert dataflow_api.jobs[job_id]["currentState"] == "JOB_STATE_CANCELLED"
    (update,) = dataflow_api.served("PUT")
    assert update.body == {"requestedState": "JOB_STATE_CANCELLED"}


def _deferred_and_holding(dataflow_api, tmp_path):
    """The trigger of a deferred `wait`, revived as the triggerer does, its run holding the day."""
    from image_embeddings_airflow.dag.tasks import claim_day

    plan = resolve_run({}, NOV_28, DATAFLOW) | {"output_dir": str(tmp_path / "2026-11-28")}
    token = claim_day(plan, HOLDER)
    job_id = dataflow_api.add_job(NAME, "JOB_STATE_RUNNING")
    trigger = DataflowJobWaitTrigger(
        job_id=job_id,
        expected_statuses={"JOB_STATE_DONE"},
        project_id=PROJECT,
        location=REGION,
        lease={"plan": plan, "holder": HOLDER, "token": token},
        renew_every_s=3600.0,
    )
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    return plan, job_id, getattr(importlib.import_module(module), name)(**kwargs)


def _day_is_free(plan) -> bool:
    from image_embeddings_airflow.dag.tasks import claim_day

    return claim_day(plan, "dag:image_embeddings:next") is not None


def test_killing_the_deferred_sensor_cancels_the_job_then_frees_the_day(dataflow_api, tmp_path):
    plan, job_id, trigger = _deferred_and_holding(dataflow_api, tmp_path)

    asyncio.run(trigger.on_kill())

    assert dataflow_api.jobs[job_id]["currentState"] == "JOB_STATE_CANCELLED"
    (update,) = dataflow_api.served("PUT")
    assert update.body == {"requestedState": "JOB_STATE_CANCELLED"}
    assert _day_is_free(plan)


def test_a_killed_job_that_does_not_stop_in_time_keeps_the_day_held(
    dataflow_api, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("AIRFLOW__TRIGGERER__ON_KILL_TIMEOUT", "3")
    monkeypatch.setattr(dataflow, "STOP_POLL_S", 0.2)
    dataflow_api.stops_on_cancel = False
    plan, job_id, trigger = _deferred_and_holding(dataflow_api, tmp_path)

    started = time.monotonic()
    asyncio.run(trigger.on_kill())

    assert time.monotonic() - started < 3  # inside the triggerer's on_kill_timeout
    assert dataflow_api.jobs[job_id]["currentState"] == "JOB_STATE_CANCELLING"
    why = f"Dataflow job {job_id} has not stopped 2 s after its cancellation and may still write"
    assert why in capsys.readouterr().out
    assert not _day_is_free(plan)


def test_a_kill_the_triggerer_cancels_again_still_frees_the_day_once_the_job_stops(
    dataflow_api, tmp_path, monkeypatch
):
    monkeypatch.setattr(dataflow, "STOP_POLL_S", 0.1)
    dataflow_api.stops_on_cancel = False
    plan, job_id, trigger = _deferred_and_holding(dataflow_api, tmp_path)

    async def killed_twice_then_stopped() -> bool:
        kill = asyncio.create_task(trigger.on_kill())
        while not dataflow_api.served("PUT"):
            await asyncio.sleep(0.05)
        kill.cancel()  # what the triggerer's next loop does to a killed trigger
        with contextlib.suppress(asyncio.CancelledError):
            await kill
        dataflow_api.jobs[job_id]["currentState"] = "JOB_STATE_CANCELLED"
        for _ in range(50):
            if _day_is_free(plan):
                return True
            await asyncio.sleep(0.1)
        return False

    assert asyncio.run(killed_twice_then_stopped())


def test_killing_embed_cancels_the_job_it_launched_or_reused(dataflow_api):
    """The provider's on_kill, with the hook and job id that a launch or a reuse leaves."""
    from airflow.providers.google.cloud.hooks.dataflow import DataflowHook

    from image_embeddings_airflow.dag.operators import EmbedImagesOperator

    job_id = dataflow_api.add_job(NAME, "JOB_STATE_RUNNING")
    embed = _in_dag(
        EmbedImagesOperator,
        task_id="embed",
        plan=resolve_run({}, NOV_28, DATAFLOW),
        manifest="gs://photos/embeddings/2026-11-28/manifest.txt",
    )
    embed.dataflow_hook = DataflowHook(cancel_timeout=10, poll_sleep=1)
    embed.dataflow_job_id = job_id
    embed.on_kill()
    assert dataflow_api.jobs[job_id]["currentState"] == "JOB_STATE_CANCELLED"


def _renew_for_a_moment(trigger: DataflowJobWaitTrigger) -> None:
    async def briefly() -> None:
        renewal = asyncio.create_task(trigger._renew())
        await asyncio.sleep(0.5)
        renewal.cancel()

    asyncio.run(briefly())


def test_the_wait_trigger_renews_the_runs_lease_and_stops_once_it_is_lost(tmp_path):
    from datetime import UTC, datetime, timedelta

    from beam_jobs.image_embeddings.storage import lease

    output = str(tmp_path / "2026-11-28")
    holder = "dag:image_embeddings:manual__2026-11-28"
    taken = lease.acquire(output, holder, timedelta(hours=1))
    trigger = DataflowJobWaitTrigger(
        job_id="job",
        expected_statuses={"JOB_STATE_DONE"},
        project_id=PROJECT,
        location=REGION,
        lease={"plan": {"output_dir": output}, "holder": holder, "token": taken.token},
        renew_every_s=0.1,
    )

    _renew_for_a_moment(trigger)
    renewed = lease.LeaseRecord.from_bytes((tmp_path / "2026-11-28" / "_LEASE").read_bytes())
    lease.acquire(output, holder, timedelta(seconds=-1))
    lease.acquire(output, "dag:image_embeddings:next", timedelta(hours=1))
    _renew_for_a_moment(trigger)

    expires = datetime.fromisoformat(renewed.expires_at)
    assert expires > datetime.now(UTC) + timedelta(hours=23)
    assert renewed.token == taken.token
    lease.check_held(
        output,
        "dag:image_embeddings:next",
        lease.acquire(output, "dag:image_embeddings:next", timedelta(hours=1)).token,
        "write",
    )

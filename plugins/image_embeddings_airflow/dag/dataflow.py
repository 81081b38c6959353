"""Dataflow jobs through the provider's hook: find the day's running job; cancel it on a kill;
renew the day's lease while waiting for it, and give the day back once a killed job has stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from airflow.providers.google.cloud.hooks.dataflow import DataflowHook, DataflowJobStatus
from airflow.providers.google.cloud.triggers.dataflow import DataflowJobStatusTrigger
from asgiref.sync import sync_to_async

# A job in these states will run the day's pipeline to its end: a retry attaches to it.
REUSABLE_STATES = frozenset(
    {
        DataflowJobStatus.JOB_STATE_PENDING,
        DataflowJobStatus.JOB_STATE_QUEUED,
        DataflowJobStatus.JOB_STATE_STOPPED,  # Dataflow's word for "not started yet"
        DataflowJobStatus.JOB_STATE_RUNNING,
    }
)
# A job in these states is going away but still holds its name: a new one cannot start yet.
STOPPING_STATES = frozenset(
    {DataflowJobStatus.JOB_STATE_CANCELLING, DataflowJobStatus.JOB_STATE_DRAINING}
)

# How often a killed trigger reads its cancelled job's state while waiting for it to stop.
STOP_POLL_S = 2.0
# The kills under way in this process (the event loop holds only weak references to tasks).
_KILLS: set[asyncio.Task] = set()


class JobStillStopping(RuntimeError):
    """The day's previous job is being cancelled or drained: launching now would collide."""


def reusable_job(jobs: Iterable[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The newest job named exactly `name` that is queued or running, if any.

    Raises JobStillStopping when the only such job is being cancelled or drained.
    """
    named = sorted(
        (job for job in jobs if job.get("name") == name),
        key=lambda job: job.get("createTime", ""),
        reverse=True,
    )
    for job in named:
        if job.get("currentState") in REUSABLE_STATES:
            return job
    for job in named:
        if job.get("currentState") in STOPPING_STATES:
            raise JobStillStopping(
                f"Dataflow job {name} ({job['id']}) is {job['currentState']}; a new job with "
                "that name can start once it has stopped: the task's retry will launch it"
            )
    return None


def active_jobs(hook: DataflowHook, name: str, project_id: str, location: str) -> list[dict]:
    """Every not yet terminated job named `name`, through the Dataflow REST API (all pages)."""
    jobs = hook.get_conn().projects().locations().jobs()
    request = jobs.list(projectId=project_id, location=location, filter="ACTIVE", name=name)
    found: list[dict] = []
    while request is not None:
        response = request.execute(num_retries=hook.num_retries)
        # The name filter is a hint to the service: match exactly here.
        found.extend(job for job in response.get("jobs", []) if job.get("name") == name)
        request = jobs.list_next(previous_request=request, previous_response=response)
    return found


def find_reusable_job(
    hook: DataflowHook, name: str, project_id: str, location: str
) -> dict[str, Any] | None:
    """The day's queued or running job, which a retried launch must attach to instead of starting
    a second one."""
    return reusable_job(active_jobs(hook, name, project_id, location), name)


def cancel_job(
    gcp_conn_id: str,
    impersonation_chain: str | Sequence[str] | None,
    job_id: str,
    project_id: str,
    location: str,
) -> None:
    """Request the job's cancellation without waiting for it to stop."""
    hook = DataflowHook(
        gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain, cancel_timeout=None
    )
    hook.cancel_job(job_id=job_id, project_id=project_id, location=location)


def job_state(plan: Mapping[str, Any], job_id: str | None) -> str | None:
    """The current state of the run's Dataflow job; None when it ran no job on Dataflow."""
    if not job_id:
        return None
    hook = DataflowHook(gcp_conn_id=plan["gcp_conn_id"])
    job = hook.get_job(job_id=job_id, project_id=plan["gcp_project"], location=plan["gcp_region"])
    return job["currentState"]


class DataflowJobWaitTrigger(DataflowJobStatusTrigger):
    """The provider's job status trigger, plus: the run's day lease renewed while it waits
    (`lease`: the plan, holder and token), and clearing or marking the deferred task cancels
    the job (the provider's trigger leaves it running) and, once the job has stopped, releases
    the day."""

    def __init__(self, *, lease: Mapping[str, Any], renew_every_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lease = dict(lease)
        self.renew_every_s = renew_every_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        kwargs = {**kwargs, "lease": self.lease, "renew_every_s": self.renew_every_s}
        return f"{__name__}.{type(self).__name__}", kwargs

    async def run(self):
        renewal = asyncio.create_task(self._renew())
        try:
            async for event in super().run():
                yield event
        finally:
            renewal.cancel()

    async def _renew(self) -> None:
        from beam_jobs.image_embeddings.storage.lease import LeaseLost
        from image_embeddings_airflow.dag.tasks import renew_day

        while True:
            try:
                await sync_to_async(renew_day)(
                    self.lease["plan"], self.lease["holder"], self.lease["token"]
                )
            except LeaseLost as lost:
                # The job's own fenced steps refuse from now on; the wait goes on to its end.
                self.log.error("%s", lost)
                return
            except Exception:
                self.log.warning("Renewing the day's lease failed; trying again", exc_info=True)
            await asyncio.sleep(self.renew_every_s)

    async def on_kill(self) -> None:
        # Airflow 3.3's triggerer cancels a killed trigger again on each of its loops (about
        # every second) until it has ended, which would cut the cancellation and the wait for
        # the job short: they run as a task of their own, which the triggerer's loop carries on.
        kill = asyncio.create_task(self._cancel_then_release())
        _KILLS.add(kill)
        kill.add_done_callback(_KILLS.discard)
        await asyncio.shield(kill)

    async def _cancel_then_release(self) -> None:
        from image_embeddings_airflow.dag.tasks import release_day

        output_dir = self.lease["plan"]["output_dir"]
        try:
            self.log.info("Task killed by a user: cancelling Dataflow job %s", self.job_id)
            await sync_to_async(cancel_job)(
                self.gcp_conn_id,
                self.impersonation_chain,
                self.job_id,
                self.project_id,
                self.location,
            )
            # `release_day` may run before the cancelled job has stopped (marking the run
            # failed starts it at once), and then keeps the day held: release it here.
            patience_s = stop_patience_s()
            state = await self._state_once_stopped(patience_s)
            if state is None:
                self.log.warning(
                    "Dataflow job %s has not stopped %.0f s after its cancellation and may still "
                    "write %s: the day stays held until its lease expires (no longer renewed)",
                    self.job_id,
                    patience_s,
                    output_dir,
                )
                return
            # The run's other job has ended: the analysis starts after the embedding's end.
            released = await sync_to_async(release_day)(
                self.lease["plan"], self.lease["holder"], self.lease["token"], {self.job_id: state}
            )
        except Exception:
            # Nobody awaits this task once the triggerer has cancelled on_kill again.
            self.log.exception(
                "Cancelling Dataflow job %s or releasing %s failed", self.job_id, output_dir
            )
            return
        self.log.info(
            "Dataflow job %s is %s: %s %s",
            self.job_id,
            state,
            "released" if released else "this run no longer held",
            output_dir,
        )

    async def _state_once_stopped(self, patience_s: float) -> str | None:
        """The job's terminal state, polled until it has one; None after `patience_s`."""
        from image_embeddings_airflow.dag.tasks import job_ended

        deadline = asyncio.get_running_loop().time() + patience_s
        while True:
            state = await sync_to_async(job_state)(self.lease["plan"], self.job_id)
            if job_ended(state):
                return state
            if asyncio.get_running_loop().time() >= deadline:
                return None
            await asyncio.sleep(STOP_POLL_S)


def stop_patience_s() -> float:
    """How long a killed trigger waits for its cancelled job to stop: two thirds of the
    triggerer's `[triggerer] on_kill_timeout`, leaving the rest to release the day."""
    from airflow.sdk.configuration import conf

    return conf.getint("triggerer", "on_kill_timeout", fallback=30) * 2 / 3

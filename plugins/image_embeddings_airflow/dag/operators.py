"""The operators that launch the day's Beam jobs and wait for them: one DAG shape for the
DirectRunner and for Dataflow."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.google.cloud.hooks.dataflow import DataflowJobStatus
from airflow.providers.google.cloud.links.dataflow import DataflowJobLink
from airflow.providers.google.cloud.operators.dataflow import DataflowConfiguration
from airflow.providers.google.cloud.sensors.dataflow import DataflowJobStatusSensor
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout

from image_embeddings_airflow.dag.dataflow import (
    DataflowJobWaitTrigger,
    cancel_job,
    find_reusable_job,
)
from image_embeddings_airflow.dag.launch import (
    ANALYSIS_MODULE,
    PIPELINE_MODULE,
    POLL_SLEEP_S,
    Launch,
    WaitMode,
    analysis_launch,
    console_url,
    launch,
    wait_mode,
)
from image_embeddings_airflow.dag.tasks import (
    dag_holder,
    read_analysis_marker,
    read_success_marker,
)

# The triggerer renews the day's lease this often while the job runs (the lease lasts 24 h).
LEASE_RENEW_EVERY = timedelta(hours=1)


class DayJobOperator(BeamRunPythonPipelineOperator):
    """Run `python -m <module>` for the run plan's day, under the run's lease (`lease_token`:
    the token `claim_day` took the day under).

    On Dataflow it returns once the job is submitted, and a retry attaches to the day's job when
    it is still queued or running instead of starting a second one; killing the task cancels it.
    """

    module: str
    template_fields: Sequence[str] = (
        *BeamRunPythonPipelineOperator.template_fields,
        "plan",
        "lease_token",
    )

    def __init__(self, *, plan: Any, lease_token: Any = None, **kwargs: Any) -> None:
        super().__init__(py_file=self.module, py_options=["-m"], **kwargs)
        self.plan = plan
        self.lease_token = lease_token

    def arguments(self) -> Launch:
        """The Beam operator's arguments for this job, from the rendered fields."""
        raise NotImplementedError

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        arguments = self.arguments()
        self.runner = arguments.runner
        # The job writes the day under this run's lease, which `claim_day` took.
        holder = dag_holder(self.dag_id, context["run_id"])
        lease = {"lease_holder": holder, "lease_token": self.lease_token}
        self.pipeline_options = {**arguments.pipeline_options, **lease}
        self.dataflow_config = (
            DataflowConfiguration(**arguments.dataflow_config) if arguments.dataflow_config else {}
        )

    def execute(self, context: Any) -> Any:
        # The interpreter of this worker: the environment that holds Beam and the pipeline.
        self.py_interpreter = sys.executable
        return super().execute(context)

    def _cast_dataflow_config(self) -> None:
        # The provider warns about a Dataflow configuration on every local run, even an empty one.
        if wait_mode(self.runner) is WaitMode.DATAFLOW_JOB:
            super()._cast_dataflow_config()
        else:
            self.dataflow_config = DataflowConfiguration(job_name=self.task_id)

    def execute_on_dataflow(self, context: Any) -> Any:
        # The provider's `check_if_running` only exists for Java pipelines, and it waits for the
        # running job to end and then starts another: attach to the running job instead.
        config = self.dataflow_config
        job = find_reusable_job(
            self.dataflow_hook, self.dataflow_job_name, config.project_id, config.location
        )
        if job is None:
            return super().execute_on_dataflow(context)
        self.log.info(
            "Dataflow job %s (%s) for this day is %s: attaching to it instead of launching "
            "another. %s",
            job["name"],
            job["id"],
            job["currentState"],
            console_url(config.project_id, config.location, job["id"]),
        )
        self.dataflow_job_id = job["id"]
        DataflowJobLink.persist(
            context=context,
            region=config.location,
            job_id=job["id"],
            project_id=config.project_id,
        )
        return {"dataflow_job_id": job["id"]}


class EmbedImagesOperator(DayJobOperator):
    """Run the embedding pipeline, `python -m beam_jobs.image_embeddings`, on the day's staged
    manifest with its prepared model."""

    module = PIPELINE_MODULE
    template_fields: Sequence[str] = (*DayJobOperator.template_fields, "manifest", "prepared_model")

    def __init__(self, *, manifest: Any, prepared_model: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.manifest = manifest
        self.prepared_model = prepared_model

    def arguments(self) -> Launch:
        return launch(self.plan, self.manifest, self.dag_id, self.prepared_model or None)


class AnalyseDayOperator(DayJobOperator):
    """Run the day's analysis job, `python -m beam_jobs.image_embeddings.analysis`: PCA, index,
    duplicates within the day and across the lookback, drift, the report. `marker`: the
    pipeline's `_SUCCESS` summary as `wait` returned it (its Dataflow job's page, if any)."""

    module = ANALYSIS_MODULE
    template_fields: Sequence[str] = (*DayJobOperator.template_fields, "marker")

    def __init__(self, *, marker: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker = marker

    def arguments(self) -> Launch:
        url = (self.marker or {}).get("dataflow_job_url")
        return analysis_launch(self.plan, self.dag_id, url)


class WaitForEmbeddingsSensor(DataflowJobStatusSensor):
    """Wait until the day's pipeline has finished, then return its `_SUCCESS` summary.

    Dataflow: the job's state, deferred to the triggerer, which renews the run's day lease
    (`lease_token`) meanwhile; a failed or cancelled job fails the task at once, with the job's
    console link; a wait that times out cancels the job. Local runners have already finished
    inside `embed`.
    """

    template_fields: Sequence[str] = (
        *DataflowJobStatusSensor.template_fields,
        "plan",
        "lease_token",
    )

    def __init__(self, *, plan: Any, job_id: str, lease_token: Any = None, **kwargs: Any) -> None:
        super().__init__(
            job_id=job_id,
            expected_statuses={DataflowJobStatus.JOB_STATE_DONE},
            deferrable=True,
            poll_interval=POLL_SLEEP_S,
            **kwargs,
        )
        self.plan = plan
        self.lease_token = lease_token

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        self.holder = dag_holder(self.dag_id, context["run_id"])
        plan: Mapping[str, Any] = self.plan
        self.project_id = plan["gcp_project"]
        self.location = plan["gcp_region"]
        self.gcp_conn_id = plan["gcp_conn_id"]

    @property
    def is_dataflow(self) -> bool:
        return wait_mode(self.plan["runner"]) is WaitMode.DATAFLOW_JOB

    @property
    def job_url(self) -> str:
        return console_url(self.project_id, self.location, self.job_id)

    def execute(self, context: Any) -> dict[str, Any]:
        if self.is_dataflow:
            self.log.info("Waiting for Dataflow job %s: %s", self.job_id, self.job_url)
            if not self.poke(context):
                self.defer(
                    trigger=DataflowJobWaitTrigger(
                        job_id=self.job_id,
                        expected_statuses=self.expected_statuses,
                        project_id=self.project_id,
                        location=self.location,
                        gcp_conn_id=self.gcp_conn_id,
                        poll_sleep=self.poll_interval,
                        impersonation_chain=self.impersonation_chain,
                        lease={
                            "plan": dict(self.plan),
                            "holder": self.holder,
                            "token": int(self.lease_token),
                        },
                        renew_every_s=LEASE_RENEW_EVERY.total_seconds(),
                    ),
                    method_name="execute_complete",
                    timeout=self.execution_timeout,
                )
        return self._marker()

    launched_by = "embed"

    def _marker(self) -> dict[str, Any]:
        """The `_SUCCESS` summary, with the job's console page when it ran on Dataflow."""
        marker = read_success_marker(self.plan["output_dir"])
        return {**marker, "dataflow_job_url": self.job_url} if self.is_dataflow else marker

    def poke(self, context: Any) -> bool:
        job = self.hook.get_job(
            job_id=self.job_id, project_id=self.project_id, location=self.location
        )
        state = job["currentState"]
        if state in self.expected_statuses:
            self.log.info("Dataflow job %s is %s", self.job_id, state)
            return True
        if state in DataflowJobStatus.TERMINAL_STATES:
            # Waiting longer cannot help: fail without retries; a new launch needs `embed` cleared.
            raise AirflowFailException(
                f"Dataflow job {self.job_id} ended {state}, not "
                f"{', '.join(sorted(self.expected_statuses))}: see {self.job_url} ; clear "
                f"'{self.launched_by}' to launch it again"
            )
        self.log.info("Dataflow job %s is %s", self.job_id, state)
        return False

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        # The trigger reports a failed job and its own errors alike: the job's state tells which.
        if event["status"] != "success" and not self.poke(context):
            raise AirflowException(
                f"Waiting for Dataflow job {self.job_id} stopped: {event['message']} "
                f"({self.job_url})"
            )
        return self._marker()

    def resume_execution(self, next_method: str, next_kwargs: Any, context: Any) -> Any:
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSensorTimeout:
            # Nobody waits for the job any more: it must not go on writing the day.
            self._cancel("Waiting timed out")
            raise

    def on_kill(self) -> None:
        self._cancel("Task killed")

    def _cancel(self, why: str) -> None:
        if self.is_dataflow and self.job_id:
            self.log.info("%s: cancelling Dataflow job %s", why, self.job_id)
            cancel_job(
                self.gcp_conn_id,
                self.impersonation_chain,
                self.job_id,
                self.project_id,
                self.location,
            )


class WaitForAnalysisSensor(WaitForEmbeddingsSensor):
    """Wait until the day's analysis job has finished, as `wait` does for the pipeline, then
    return its `_ANALYSED` record."""

    launched_by = "analyse"

    def _marker(self) -> dict[str, Any]:
        record = read_analysis_marker(self.plan["output_dir"])
        return {**record, "dataflow_job_url": self.job_url} if self.is_dataflow else record

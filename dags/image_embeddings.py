"""
### Image embeddings, one day at a time

For day **D**, every image under `INPUT_ROOT/D/` (local folder or `gs://`) is embedded with a Keras
CNN (ResNet50 by default, 2048-d) by the Apache Beam pipeline `beam_jobs.image_embeddings`, on the
Airflow worker (DirectRunner) or on Google Cloud Dataflow (DataflowRunner). Everything the run
writes lives under `OUTPUT_ROOT/D/`, and a rerun of D replaces it.

| task | what it does |
|---|---|
| `resolve_run` | settings (`IMAGE_EMBEDDINGS_*`), this run's params over them; bad values fail |
| `claim_day` | takes the day's `_LEASE`; waits while another run of the same day holds it |
| `stage_manifest` | lists the day's images into `manifest.txt`, other files into `skipped.json` |
| `prepare_model` | OpenVINO: the model converted (int8: quantized, checked) once per fingerprint |
| `embed` | launches the pipeline; on Dataflow a retry attaches to the day's running job |
| `wait` | Dataflow: waits (deferred) for the job; then confirms the `_SUCCESS` marker |
| `validate` | every manifest entry embedded or failed exactly once, vectors sound, failure rate |
| `analyse` | launches the day's analysis job: PCA, index, duplicates, drift, `report.html` |
| `wait_analysis` | Dataflow: waits (deferred) for the analysis job; then confirms `_ANALYSED` |
| `summarise` | logs the day's summary and drift; announces the day to downstream DAGs |
| `publish` | if `IMAGE_EMBEDDINGS_PUBLISH` names targets: D replaced in pgvector, BigQuery |
| `release_day` | gives the day's `_LEASE` back, however the run ended, once its job has ended |

**Day D** is the `date` param when set, else the run's logical date. Scheduled runs start after
their day has ended (data interval D 00:00 to D+1 00:00 UTC).
Backfill: `airflow backfill create --dag-id image_embeddings --from-date D1 --to-date D2`.
Manual runs, `make run` and backfills embed any day, before `IMAGE_EMBEDDINGS_START_DATE` too: that
setting bounds the schedule only (a scheduled run of an earlier day is skipped, saying so).
Killing or clearing `embed`, `analyse` or their waits, or a wait timing out, cancels the day's
Dataflow job; a killed wait gives the day back once the job has stopped.
Every step that clears or publishes in the day's folder first checks the run's lease token.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, CronDataIntervalTimetable, PokeReturnValue, TaskGroup, dag, task

from image_embeddings_airflow.dag import tasks as dag_tasks
from image_embeddings_airflow.dag.operators import (
    AnalyseDayOperator,
    EmbedImagesOperator,
    WaitForAnalysisSensor,
    WaitForEmbeddingsSensor,
)
from image_embeddings_airflow.dag.params import dag_params
from image_embeddings_airflow.dag.tasks import dag_holder

# Downstream DAGs schedule on `Asset(name="image_embeddings_validated")`; each event's extra
# names the day and its output folder.
VALIDATED_EMBEDDINGS = Asset(name="image_embeddings_validated", group="image_embeddings")
# A run, and a run waiting for its day, end after this long; a day's lease expires after it too.
RUN_TIMEOUT = timedelta(hours=24)
# How often a run whose day another run holds looks again (the sensor sleeps in between, without
# holding a worker slot).
POKE_INTERVAL = timedelta(seconds=30)


@dag(
    dag_id="image_embeddings",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    # No start_date: Airflow creates no task of a manual run whose logical date precedes it, so
    # such a run would "succeed" doing nothing. resolve_run applies the schedule's start instead.
    catchup=False,
    # Backfills queue behind two runs at a time instead of flooding Dataflow.
    max_active_runs=2,
    default_args={
        "retries": 3,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
    },
    dagrun_timeout=RUN_TIMEOUT,
    tags=["embeddings", "beam", "dataflow", "images"],
    doc_md=__doc__,
    params=dag_params(),
)
def image_embeddings():
    @task
    def resolve_run(params=None, logical_date=None, dag_run=None) -> dict:
        return dag_tasks.resolve_run(params, logical_date, run_type=dag_run.run_type)

    @task.sensor(
        poke_interval=POKE_INTERVAL.total_seconds(),
        timeout=RUN_TIMEOUT.total_seconds(),
        mode="reschedule",
    )
    def claim_day(plan: dict, dag_run=None) -> PokeReturnValue:
        token = dag_tasks.claim_day(plan, dag_holder(dag_run.dag_id, dag_run.run_id))
        return PokeReturnValue(is_done=token is not None, xcom_value=token)

    @task(multiple_outputs=True)
    def stage_manifest(plan: dict, token: int, dag_run=None) -> dict:
        return dag_tasks.stage(plan, dag_holder(dag_run.dag_id, dag_run.run_id), token)

    @task(multiple_outputs=True)
    def prepare_model(plan: dict, manifest: str) -> dict:
        return dag_tasks.prepare(plan, manifest)

    @task
    def validate(plan: dict) -> dict:
        return dag_tasks.validate(plan)

    @task(outlets=[VALIDATED_EMBEDDINGS])
    def summarise(plan: dict, marker: dict, analysed: dict, outlet_events=None) -> dict:
        summary = dag_tasks.summarise(plan, marker, analysed)
        outlet_events[VALIDATED_EMBEDDINGS].extra = summary
        return summary

    @task(task_id="pgvector")
    def publish_pgvector(plan: dict, token: int, dag_run=None) -> dict:
        holder = dag_holder(dag_run.dag_id, dag_run.run_id)
        return dag_tasks.publish_pgvector(plan, holder, token)

    @task(task_id="bigquery")
    def publish_bigquery(plan: dict, token: int, dag_run=None) -> dict:
        holder = dag_holder(dag_run.dag_id, dag_run.run_id)
        return dag_tasks.publish_bigquery(plan, holder, token)

    @task
    def release_day(plan: dict, token: int | None, dag_run=None, ti=None) -> bool:
        from image_embeddings_airflow.dag.dataflow import job_state

        states = {
            job: job_state(plan, ti.xcom_pull(task_ids=job, key="dataflow_job_id"))
            for job in ("embed", "analyse")
        }
        holder = dag_holder(dag_run.dag_id, dag_run.run_id)
        return dag_tasks.release_day(plan, holder, token, states)

    plan = resolve_run()
    claimed = claim_day(plan)
    staged = stage_manifest(plan, claimed)
    prepared = prepare_model(plan, staged["uri"])
    embed = EmbedImagesOperator(
        task_id="embed",
        plan=plan,
        manifest=staged["uri"],
        prepared_model=prepared["prepared_model"],
        lease_token=claimed,
    )
    wait = WaitForEmbeddingsSensor(
        task_id="wait",
        plan=plan,
        job_id="{{ ti.xcom_pull(task_ids='embed', key='dataflow_job_id') }}",
        lease_token=claimed,
        execution_timeout=timedelta(hours=12),
    )
    validated = validate(plan)
    analyse = AnalyseDayOperator(
        task_id="analyse", plan=plan, marker=wait.output, lease_token=claimed
    )
    wait_analysis = WaitForAnalysisSensor(
        task_id="wait_analysis",
        plan=plan,
        job_id="{{ ti.xcom_pull(task_ids='analyse', key='dataflow_job_id') }}",
        lease_token=claimed,
        execution_timeout=timedelta(hours=6),
    )
    summarised = summarise(plan, wait.output, wait_analysis.output)
    with TaskGroup("publish") as publish:
        publish_pgvector(plan, claimed)
        publish_bigquery(plan, claimed)
    released = release_day(plan, claimed).as_teardown(setups=claimed)
    embed >> wait >> validated >> analyse >> wait_analysis >> summarised >> released
    validated >> publish >> released


image_embeddings()

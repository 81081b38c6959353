"""The bodies of the DAG's Python tasks: functions of the run plan that raise Airflow's outcomes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from beam_jobs.image_embeddings.contract import (
    ANALYSIS_MARKER,
    DRIFTED,
    PREPARE_REFUSED_EXIT,
    SUCCESS_KEYS,
    join,
)

log = logging.getLogger(__name__)


def resolve_run(
    params: Mapping[str, Any],
    logical_date: datetime | None,
    environ: Mapping[str, str] = os.environ,
    run_type: str | None = None,
) -> dict[str, Any]:
    """The run plan: settings from the environment, the run's params over them, the day D.

    Bad values fail the task at once, without retries: nothing else has run yet. A scheduled
    run of a day before the schedule's start is skipped; any other run may embed any day.
    """
    from image_embeddings_airflow.dag.params import before_schedule_start, resolve_plan
    from image_embeddings_airflow.settings import load_settings

    try:
        settings = load_settings(environ)
        plan = resolve_plan(settings, params, logical_date)
    except ValueError as error:
        raise AirflowFailException(f"refused before anything ran: {error}") from None
    if before_schedule_start(run_type, plan.day, settings.start_date):
        raise AirflowSkipException(
            f"Day {plan.day} is before IMAGE_EMBEDDINGS_START_DATE ({settings.start_date}), "
            "where the daily schedule starts: nothing embedded. To embed it, trigger the DAG "
            "with the 'date' param, run `make run DATE=...`, or backfill the day."
        )
    log.info(
        "Day %s: %s -> %s with %s (%s weights, model %s)",
        plan.day,
        plan.input_dir,
        plan.output_dir,
        plan.runner,
        plan.weights,
        plan.model,
    )
    if plan.weights == "random":
        log.warning("Weights are 'random': these embeddings carry no meaning (smoke runs only)")
    return plan.as_dict()


def dag_holder(dag_id: str, run_id: str) -> str:
    """The lease holder of a DAG run: `dag:<dag_id>:<run_id>`, what the UI shows for that run."""
    return f"dag:{dag_id}:{run_id}"


def _day(plan: Mapping[str, Any]) -> tuple[str, Any]:
    """The day folder as the lease names it, and the storage client of its lease."""
    from image_embeddings_airflow import storage

    output_dir = storage.absolute(plan["output_dir"])
    return output_dir, storage.gcs_client() if storage.is_gcs(output_dir) else None


def fence(plan: Mapping[str, Any], holder: str, token: int, action: str) -> None:
    """Fail the task, without retries, unless this run still holds the day under `token`."""
    from beam_jobs.image_embeddings.storage import lease

    output_dir, client = _day(plan)
    try:
        lease.check_held(output_dir, holder, int(token), action, client)
    except lease.LeaseLost as lost:
        raise AirflowFailException(str(lost)) from None


def claim_day(plan: Mapping[str, Any], holder: str) -> int | None:
    """Take the day's output folder for this run: its fencing token, or None (logged, and the
    sensor pokes again) while another run holds it."""
    from beam_jobs.image_embeddings.storage import lease

    output_dir, client = _day(plan)
    try:
        taken = lease.acquire(output_dir, holder, lease.DEFAULT_TTL, client)
    except lease.LeaseHeld as held:
        log.info("Waiting: %s", held)
        return None
    log.info(
        "%s holds %s until %s (token %s)", holder, output_dir, taken.record.expires_at, taken.token
    )
    return taken.token


def renew_day(plan: Mapping[str, Any], holder: str, token: int) -> None:
    """Extend this run's lease while its job runs; LeaseLost when the run no longer holds it."""
    from beam_jobs.image_embeddings.storage import lease

    output_dir, client = _day(plan)
    lease.renew(output_dir, holder, int(token), lease.DEFAULT_TTL, client)


def release_day(
    plan: Mapping[str, Any],
    holder: str,
    token: int | None,
    job_states: Mapping[str, str | None],
) -> bool:
    """Give the day's output folder back once the run's jobs have ended (`job_states`: the
    Dataflow job's state by the task that launched it, None where none ran remotely); True
    when released."""
    from beam_jobs.image_embeddings.storage import lease

    if token is None:
        log.info("This run never held %s: nothing to give back", plan["output_dir"])
        return False
    running = {task: state for task, state in job_states.items() if state and not job_ended(state)}
    if running:
        log.warning(
            "Dataflow jobs still write %s (%s): the day stays held until their lease expires",
            plan["output_dir"],
            ", ".join(f"{task}'s is {state}" for task, state in running.items()),
        )
        return False
    output_dir, client = _day(plan)
    released = lease.release_held(output_dir, holder, int(token), client)
    log.info("%s %s", "Released" if released else "Did not hold", output_dir)
    return released


def job_ended(state: str) -> bool:
    from airflow.providers.google.cloud.hooks.dataflow import DataflowJobStatus

    return state in DataflowJobStatus.TERMINAL_STATES


def stage(plan: Mapping[str, Any], holder: str, token: int) -> dict[str, Any]:
    """Write the day's manifest; skip everything downstream when the day has no images.

    The run must hold the day: staging clears the folder, and never one another run writes.
    """
    from image_embeddings_airflow.dag.manifest import stage_manifest

    fence(plan, holder, token, "clear the day and stage its manifest")
    info = stage_manifest(plan["input_dir"], plan["output_dir"])
    log.info("Day %s: %d images, %s", plan["day"], info.count, info.skipped.summary())
    if info.count == 0:
        raise AirflowSkipException(
            f"No images under {plan['input_dir']} for {plan['day']}: nothing to embed, "
            f"the following tasks are skipped ({info.skipped.summary()})"
        )
    return {"uri": info.uri, "count": info.count, "skipped": info.skipped.to_dict()}


def prepare(plan: Mapping[str, Any], manifest: str) -> dict[str, Any]:
    """Prepare the day's OpenVINO model (or find it in the model cache) before `embed`.

    Runs `python -m beam_jobs.image_embeddings.engine.prepare` in its own process, as `embed` runs
    the pipeline: TensorFlow, OpenVINO and NNCF stay out of the Airflow worker. An int8 model below
    the accuracy thresholds fails the task without retries, with the figures, before anything is
    embedded.
    """
    from image_embeddings_airflow.dag.launch import (
        PREPARE_MODULE,
        command_line,
        preparation_options,
    )

    if plan["engine"] != "openvino":
        log.info("Engine %s runs the Keras model itself: nothing to prepare", plan["engine"])
        return {"prepared_model": None}
    command = [
        sys.executable,
        "-m",
        PREPARE_MODULE,
        *command_line(preparation_options(plan, manifest)),
    ]
    log.info("Preparing the model: %s", " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stderr.splitlines():
        log.info("%s", line)
    if done.returncode == PREPARE_REFUSED_EXIT:
        raise AirflowFailException(_last_line(done.stderr))
    if done.returncode != 0:
        raise RuntimeError(f"model preparation failed: {_last_line(done.stderr)}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    log.info(
        "Prepared model %s (fingerprint %s, %s; int8 figures %s)",
        result["prepared_model"],
        result["fingerprint"],
        "found in the cache" if result["cache_hit"] else "built now",
        result["accuracy"],
    )
    return result


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no message"


def read_success_marker(output_dir: str) -> dict[str, Any]:
    """The pipeline's `_SUCCESS` summary; fail when it is missing or incomplete."""
    from beam_jobs.image_embeddings.marker import NoMarker, marker_uri, success_record
    from image_embeddings_airflow import storage

    try:
        marker = success_record(output_dir, storage)
    except NoMarker as error:
        raise AirflowFailException(
            f"{error}: the pipeline did not complete; clear 'embed' to run it again"
        ) from None
    missing = [key for key in SUCCESS_KEYS if key not in marker]
    if missing:
        raise AirflowFailException(f"{marker_uri(output_dir)} lacks {', '.join(missing)}: {marker}")
    log.info(
        "Pipeline finished: %d images, %d embedded, %d failed (%s, dim %d)",
        marker["images"],
        marker["embedded"],
        marker["failed"],
        marker["model"],
        marker["dim"],
    )
    return marker


def validate(plan: Mapping[str, Any]) -> dict[str, Any]:
    """Check the day's outputs against the manifest and the contract; fail with the report."""
    from image_embeddings_airflow.dag.validation import ValidationError, validate_output

    try:
        report = validate_output(plan["output_dir"], plan["max_failure_rate"])
    except ValidationError as error:
        # The same outputs fail the same way on a retry: fail now, with the report.
        raise AirflowFailException(str(error)) from None
    return {
        "counts": report.counts,
        "failure_rate": report.failure_rate,
        "dim": report.dim,
        "skipped": report.skipped,
    }


def run_summary(marker: Mapping[str, Any]) -> dict[str, Any]:
    """Images, embedded (of which reused from earlier runs), failed, images per second and
    duration of one pipeline run."""
    duration = marker.get("duration_s")
    rate = marker["embedded"] / duration if duration else None
    return {
        "images": marker["images"],
        "embedded": marker["embedded"],
        "reused": marker.get("reused"),
        "failed": marker["failed"],
        "images_per_s": round(rate, 2) if rate is not None else None,
        "duration_s": round(duration, 1) if duration is not None else None,
    }


def read_analysis_marker(output_dir: str) -> dict[str, Any]:
    """The analysis job's `_ANALYSED` record; fail when it is missing."""
    from image_embeddings_airflow import storage

    uri = join(output_dir, ANALYSIS_MARKER)
    if not storage.exists(uri):
        raise AirflowFailException(
            f"{uri} is missing: the analysis job did not complete; clear 'analyse' to run it again"
        )
    record = json.loads(storage.read_bytes(uri))
    duplicates, drift = record["duplicates"], record["drift"]
    log.info(
        "Analysis finished: %d rows, %d components, %d exact and %d near duplicates, drift %s",
        record["rows"],
        record["n_components"],
        duplicates["exact"],
        duplicates["near"],
        drift["verdict"],
    )
    return record


def summarise(
    plan: Mapping[str, Any], marker: Mapping[str, Any], analysed: Mapping[str, Any]
) -> dict[str, Any]:
    """The run's summary from its `_SUCCESS` and `_ANALYSED` records: logged, and returned for
    the Asset event. Writes nothing.

    A drifted day logs a warning, and fails the task (its report and `drift.json` are written)
    only when `drift_fails` is set: the same outputs drift the same way on a retry.
    """
    summary = run_summary(marker)
    drift = analysed["drift"]
    log.info("Plot of day %s: %s", plan["day"], analysed["plot"])
    log.info("Report of day %s: %s", plan["day"], analysed["report"])
    log.info(
        "Summary of day %s: %d images, %d embedded, %d failed, %s img/s, %s s",
        plan["day"],
        summary["images"],
        summary["embedded"],
        summary["failed"],
        summary["images_per_s"],
        summary["duration_s"],
    )
    check_drift(plan, drift)
    figures = drift["figures"] or {}
    return {
        "day": plan["day"],
        "output_dir": plan["output_dir"],
        "plot": analysed["plot"],
        "projection": analysed["projection"],
        "report": analysed["report"],
        "model": marker["model"],
        "weights": marker.get("weights"),
        **summary,
        "index": analysed["index"],
        "duplicates": {key: analysed["duplicates"][key] for key in ("exact", "near", "images")},
        "drift": {
            "verdict": drift["verdict"],
            "relative_frechet": figures.get("relative_frechet"),
            "reference_days": drift["reference_days"],
        },
    }


def check_drift(plan: Mapping[str, Any], drift: Mapping[str, Any]) -> None:
    """Warn of a drifted day; fail the task when `drift_fails` is set."""
    if drift["verdict"] != DRIFTED:
        log.info("Drift of day %s: %s", plan["day"], drift["verdict"])
        return
    figures = drift["figures"]
    message = (
        f"Day {plan['day']} drifted from {', '.join(drift['reference_days'])}: relative Fréchet "
        f"distance {figures['relative_frechet']:.3f} > {drift['effective_threshold']:.3f}, "
        f"{figures['far_share']:.1%} of its images far from the reference"
    )
    if plan["drift_fails"]:
        raise AirflowFailException(message + " (IMAGE_EMBEDDINGS_DRIFT_FAILS is true)")
    log.warning(message)


def _skip_unless_publishing_to(plan: Mapping[str, Any], target: str) -> None:
    if target not in (plan["publish"] or "").split(","):
        raise AirflowSkipException(f"publishing to {target} is off for this run")


def publish_pgvector(plan: Mapping[str, Any], holder: str, token: int) -> dict[str, Any]:
    """Replace day D in the pgvector table with the validated day; skipped when not a target.
    Only while the run holds the day."""
    from image_embeddings_airflow.publish.pgvector import publish

    _skip_unless_publishing_to(plan, "pgvector")
    fence(plan, holder, token, "publish the day to pgvector")
    return publish(
        plan["pgvector_conn_id"], plan["pgvector_table"], plan["output_dir"], plan["day"]
    )


def publish_bigquery(plan: Mapping[str, Any], holder: str, token: int) -> dict[str, Any]:
    """Replace day D's partition of the BigQuery table; skipped when not a target. Only while
    the run holds the day."""
    from image_embeddings_airflow.publish.bigquery import publish

    _skip_unless_publishing_to(plan, "bigquery")
    fence(plan, holder, token, "publish the day to BigQuery")
    return publish(plan)

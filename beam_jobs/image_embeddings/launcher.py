"""Launching the pipeline: argv -> options -> a clean output -> build -> run -> report."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    TestOptions,
    WorkerOptions,
)
from apache_beam.runners.runner import PipelineResult, PipelineState

from beam_jobs.image_embeddings.contract import (
    FINGERPRINT_KEY,
    PREVIOUS_FINGERPRINT_KEY,
    manifest_entries,
)
from beam_jobs.image_embeddings.engine.accuracy import check_accuracy
from beam_jobs.image_embeddings.engine.fingerprint import fingerprint, fingerprint_parts
from beam_jobs.image_embeddings.engine.fingerprint_change import previous_fingerprint
from beam_jobs.image_embeddings.engine.model_cache import read_card
from beam_jobs.image_embeddings.engine.models import ModelSpec, resolve_model
from beam_jobs.image_embeddings.options import (
    DEFAULT_LOOKBACK_DAYS,
    JobOptions,
    parse_known_args,
)
from beam_jobs.image_embeddings.outputs import read_success_marker, remove_earlier_run, utc_now
from beam_jobs.image_embeddings.pipeline import build_pipeline
from beam_jobs.image_embeddings.progress import ProgressReporter, batch_size_stats, summary_line
from beam_jobs.image_embeddings.reuse.earlier_runs import (
    ReuseSource,
    folder_name,
    reuse_sources,
    set_aside_previous_run,
)
from beam_jobs.image_embeddings.storage import gcs, io, lease

LOGGER = logging.getLogger(__name__)

SETUP_FILE = Path(__file__).resolve().parents[1] / "setup.py"


def runner_name(options: PipelineOptions) -> str:
    """The runner's short lower-case name: `direct`, `dataflow`, ..."""
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.lower().removesuffix("runner")


def is_dataflow(options: PipelineOptions) -> bool:
    return runner_name(options) == "dataflow"


def in_launcher_process(options: PipelineOptions) -> bool:
    """True when the DoFns run in this process, so progress can be read from here."""
    direct = runner_name(options) in ("direct", "switchingdirect", "bundlebaseddirect")
    return direct and options.view_as(DirectOptions).direct_running_mode != "multi_processing"


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam's options from the pass-through arguments, plus what a Dataflow job needs.

    A Dataflow job with neither `--setup_file` nor `--sdk_container_image` gets this package's
    setup.py, so its workers install the package and its dependencies.
    """
    options = PipelineOptions(beam_args)
    if is_dataflow(options):
        setup = options.view_as(SetupOptions)
        if not setup.setup_file and not options.view_as(WorkerOptions).sdk_container_image:
            setup.setup_file = str(SETUP_FILE)
    return options


def count_entries(manifest: str) -> int:
    """Distinct entries of a manifest, read here to give progress lines their total."""
    return len(set(manifest_entries(io.read_text(manifest).splitlines())))


def lease_client(options: PipelineOptions, output: str):
    """The storage client of the lease on a gs:// output (anonymous on an emulator); else None."""
    if not output.startswith("gs://"):
        return None
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.cloud import storage

        return storage.Client.create_anonymous_client()
    return gcs.create_storage_client(options)


def take_day(job: JobOptions, options: PipelineOptions) -> lease.Lease:
    """Hold the output folder for this run; LeaseHeld (naming the holder) if another run does.

    With `--lease_token`, the holder's lease must still be the one taken under that token
    (LeaseLost if not), and is renewed.
    """
    holder = job.lease_holder or lease.cli_holder()
    ttl = timedelta(seconds=job.lease_ttl_secs)
    client = lease_client(options, job.output)
    if job.lease_token is not None:
        taken = lease.renew(job.output, holder, job.lease_token, ttl, client)
    else:
        taken = lease.acquire(
            job.output,
            holder,
            ttl,
            client,
            # This command's own lease ends with it; a killed run's is taken over at once.
            process_bound=job.lease_holder is None and not is_dataflow(options),
        )
    LOGGER.info(
        "%s holds %s until %s (token %s)", holder, job.output, taken.record.expires_at, taken.token
    )
    return taken


def fence_of(job: JobOptions, taken: lease.Lease | None) -> lease.Fence | None:
    """What the job's steps check before they delete or publish: the lease taken at launch, or
    for a dry run the `--lease_holder`/`--lease_token` given (None when not given)."""
    if taken is not None:
        return lease.Fence(job.output, taken.record.holder, taken.token)
    if job.lease_token is not None:
        return lease.Fence(job.output, job.lease_holder, job.lease_token)
    return None


def give_back(taken: lease.Lease, options: PipelineOptions, job_ended: bool) -> None:
    """Release a lease this command created, once its job has ended; a holder's stays its own."""
    if not taken.created:
        return
    if not job_ended:
        LOGGER.info(
            "the job still writes %s: its lease expires at %s",
            taken.output,
            taken.record.expires_at,
        )
        return
    # By holder and token, not by the version taken: renewals while the job ran replaced it.
    holder = taken.record.holder
    lease.release_held(taken.output, holder, taken.token, lease_client(options, taken.output))


def renewal(job: JobOptions, options: PipelineOptions, fence: lease.Fence):
    """Renew the run's lease while this command waits for its job."""
    ttl = timedelta(seconds=job.lease_ttl_secs)
    client = lease_client(options, job.output)
    return lease.renewing(job.output, fence.holder, fence.token, ttl, client)


def prepare_launch(
    job: JobOptions, count: bool, fingerprint: str, fence: lease.Fence
) -> int | None:
    """Check the manifest; set the earlier run's embeddings aside for reuse (when reuse is on and
    it has this fingerprint); remove the earlier run's outputs (`_SUCCESS` first), while the run
    holds the day; count the entries if asked.
    """
    if not io.exists(job.manifest):
        raise FileNotFoundError(f"manifest not found: {job.manifest}")
    fence.check("clear the earlier run's outputs")
    if job.lookback_days or job.reuse_from:
        set_aside_previous_run(job.output, fingerprint)
    remove_earlier_run(job.output)
    return count_entries(job.manifest) if count else None


def check_card_fits(card: dict[str, Any], job: JobOptions, spec: ModelSpec) -> None:
    """Refuse a prepared model made for another model or precision than the job's."""
    parts = card["fingerprint_parts"]
    wanted = {"model": spec.name, "precision": job.precision}
    wrong = {key: parts.get(key) for key, value in wanted.items() if parts.get(key) != value}
    if wrong:
        raise ValueError(
            f"prepared model {job.prepared_model} was made for {wrong}, not {wanted}: "
            "prepare the job's model (python -m beam_jobs.image_embeddings.engine.prepare)"
        )


def prepared_card(job: JobOptions, spec: ModelSpec) -> tuple[JobOptions, dict[str, Any]]:
    """The job with its prepared model's URI, and that model's card.

    Without `--prepared_model` the model is prepared here, in the launcher (or found in the
    model cache): workers only ever load it.
    """
    if job.prepared_model is None:
        from beam_jobs.image_embeddings.engine.prepare import prepare_model

        prepared = prepare_model(job)
        return dataclasses.replace(job, prepared_model=prepared.uri), prepared.card
    card = read_card(job.prepared_model)
    check_card_fits(card, job, spec)
    if card.get("accuracy"):
        check_accuracy(card["accuracy"], job.thresholds(), job.precision)
    return job, card


def run_info(
    job: JobOptions,
    spec: ModelSpec,
    options: PipelineOptions,
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the `_SUCCESS` marker records about how the run was made; `card` is the prepared
    model's, for the OpenVINO engine."""
    parts = (
        card["fingerprint_parts"] if card else fingerprint_parts(spec, job.weights, job.precision)
    )
    prepared = (
        {"prepared_model": job.prepared_model, "accuracy": card.get("accuracy")} if card else {}
    )
    return {
        "model": spec.name,
        FINGERPRINT_KEY: fingerprint(parts),
        "fingerprint_parts": parts,
        "weights": job.weights,
        "engine": job.engine,
        "precision": job.precision,
        **prepared,
        "embedding_dtype": job.embedding_dtype,
        "runner": runner_name(options),
        "started_at": utc_now(),
    }


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None):
    """argv -> options -> build -> run; wait unless the job runs remotely and no wait is asked.

    Returns Beam's PipelineResult (for a Dataflow `--dry_run=True`, `result.job` is the built job).
    """
    job, beam_args = parse_known_args(argv)
    spec = resolve_model(job.model)
    pipeline = test_pipeline or beam.Pipeline(options=pipeline_options(beam_args))
    options = pipeline.options
    # A dry run builds the job offline: it must not touch the manifest or the output.
    dry_run = bool(options.view_as(TestOptions).dry_run)
    waits = not is_dataflow(options) or job.wait_until_finish
    card = None
    if job.engine == "openvino":
        job, card = prepared_card(job, spec)
        if is_dataflow(options) and io.is_local(job.prepared_model):
            raise ValueError(
                f"prepared model {job.prepared_model} is on this machine, where Dataflow "
                "workers cannot read it: prepare it into a gs:// --model_cache"
            )
    info = run_info(job, spec, options, card)
    if dry_run:
        # Offline: the folders named are taken as they are, unchecked.
        sources = [ReuseSource(folder_name(folder), folder) for folder in job.reuse_from]
        info["reuse_sources"] = reuse_record(sources)
        fence = fence_of(job, None)
        return _run_built(pipeline, job, spec, options, info, None, sources, waits, fence, dry_run)
    taken = take_day(job, options)
    try:
        fence = fence_of(job, taken)
        total = prepare_launch(job, count=waits, fingerprint=info[FINGERPRINT_KEY], fence=fence)
        sources = reuse_sources(
            job.output, job.lookback_days, job.reuse_from, info[FINGERPRINT_KEY]
        )
        info["reuse_sources"] = reuse_record(sources)
        info[PREVIOUS_FINGERPRINT_KEY] = previous_fingerprint(
            job.output, job.lookback_days or DEFAULT_LOOKBACK_DAYS, info[FINGERPRINT_KEY]
        )
        with renewal(job, options, fence) if waits else contextlib.nullcontext():
            result = _run_built(
                pipeline, job, spec, options, info, total, sources, waits, fence, dry_run
            )
    finally:
        give_back(taken, options, job_ended=waits)
    return result


def reuse_record(sources: Sequence[ReuseSource]) -> list[dict[str, str]]:
    """The runs reused from, as `_SUCCESS` records them."""
    return [{"day": source.day, "folder": source.folder} for source in sources]


def _run_built(
    pipeline: beam.Pipeline,
    job: JobOptions,
    spec: ModelSpec,
    options: PipelineOptions,
    info: dict[str, Any],
    total: int | None,
    sources: Sequence[ReuseSource],
    waits: bool,
    fence: lease.Fence | None,
    dry_run: bool,
) -> PipelineResult:
    """Build the job into `pipeline` (its commit fenced by `fence`), run it, wait if asked,
    report."""
    build_pipeline(pipeline, job, spec, info, total, sources, fence)
    LOGGER.info(
        "embedding %s entries of %s into %s with %s (%s weights, %s, %s)",
        "the" if total is None else total,
        job.manifest,
        job.output,
        spec.name,
        job.weights,
        job.engine,
        job.precision,
    )
    shows_progress = in_launcher_process(options) and not dry_run
    with (
        ProgressReporter(total, job.progress_interval_secs)
        if shows_progress
        else contextlib.nullcontext()
    ):
        result = pipeline.run()
        if waits:
            result.wait_until_finish()
    if dry_run:
        LOGGER.info("dry run: the job was built and not submitted")
    elif waits:
        report(result, job.output)
    else:
        LOGGER.info("job submitted; not waiting for it (pass --wait_until_finish to wait)")
    return result


def report(result: PipelineResult, output: str) -> None:
    """Fail unless the job finished; log the summary line from its `_SUCCESS` marker."""
    if result.state != PipelineState.DONE:
        raise RuntimeError(f"the job ended in state {result.state}, not DONE")
    LOGGER.info(summary_line(read_success_marker(output), batch_size_stats(result)))

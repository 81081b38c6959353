"""The day's analysis as a Beam job: PCA, index, duplicates (one earlier day per worker), drift,
the report.

The steps pass small records; what they compute lives in the day's folder and, for the
intermediate candidates, in a scratch folder every worker can read. `_ANALYSED` is written last.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import tempfile
import uuid
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, TestOptions
from apache_beam.pvalue import AsSingleton

from beam_jobs.image_embeddings.analysis.day_index import write_day_index
from beam_jobs.image_embeddings.analysis.drift import measure_drift
from beam_jobs.image_embeddings.analysis.duplicates import (
    CANDIDATE_MARGIN,
    comparable_history,
    count_in_validation,
    search_earlier,
    search_within,
    spool_for_history,
    write_found,
)
from beam_jobs.image_embeddings.analysis.options import AnalysisOptions, parse_known_args
from beam_jobs.image_embeddings.analysis.reduction import reduce_dimensions
from beam_jobs.image_embeddings.analysis.report import write_report
from beam_jobs.image_embeddings.comparable import History, window
from beam_jobs.image_embeddings.contract import ANALYSIS_MARKER, FINGERPRINT_KEY, join
from beam_jobs.image_embeddings.launcher import (
    fence_of,
    give_back,
    is_dataflow,
    pipeline_options,
    renewal,
    take_day,
)
from beam_jobs.image_embeddings.marker import success_record
from beam_jobs.image_embeddings.outputs import utc_now
from beam_jobs.image_embeddings.storage import files
from beam_jobs.image_embeddings.storage.lease import Fence

LOGGER = logging.getLogger(__name__)
WITHIN = "within the day"


def _check(fence: Fence | None, action: str) -> None:
    if fence is not None:
        fence.check(action)


def reduce_and_index(output_dir: str, job: AnalysisOptions, fence: Fence | None) -> dict:
    """PCA, projection, plot and sample, then the neighbours index built on the projection."""
    _check(fence, "write the day's PCA and index")
    reduced = reduce_dimensions(output_dir, job.pca_components, job.pca_sample_size)
    return {
        "rows": reduced.rows,
        "sample_size": reduced.sample_size,
        "n_components": reduced.n_components,
        "explained_variance_ratio": list(reduced.explained_variance_ratio),
        "projection": reduced.projection_uri,
        "pca": reduced.pca_uri,
        "plot": reduced.plot_uri,
        "index": write_day_index(output_dir),
    }


def project_for_earlier_days(
    reduced: dict, output_dir: str, days: Sequence[str], scratch: str
) -> str:
    """One pass over the day's embeddings onto every earlier day's axes, into `scratch`."""
    spool_for_history(output_dir, tuple(days), scratch)
    return scratch


def search_earlier_day(other: str, output_dir: str, scratch: str, floor: float, spooled) -> str:
    search_earlier(output_dir, join(files.parent(output_dir), other), other, scratch, floor)
    return other


def search_the_day(reduced: dict, output_dir: str, scratch: str, floor: float) -> str:
    search_within(output_dir, scratch, floor)
    return WITHIN


def confirm_duplicates(
    searched: list[str],
    output_dir: str,
    day: str,
    history: History,
    threshold: float,
    scratch: str,
    fence: Fence | None,
) -> dict:
    """Once every search has finished: the confirmed copies into `duplicates.parquet`."""
    missing = sorted({WITHIN, *history.days} - set(searched))
    if missing:
        raise RuntimeError(f"the duplicate searches of {', '.join(missing)} did not finish")
    _check(fence, "write the day's duplicates")
    counts = write_found(output_dir, day, history, threshold, scratch).counts
    count_in_validation(output_dir, counts)
    return counts


def measure(
    reduced: dict,
    output_dir: str,
    day: str,
    fingerprint: str | None,
    job: AnalysisOptions,
    fence: Fence | None,
) -> dict:
    _check(fence, "write the day's drift")
    return measure_drift(
        output_dir, day, fingerprint, job.drift_reference_days, job.drift_threshold
    )


def finish(
    counts: dict,
    output_dir: str,
    day: str,
    scratch: str,
    job: AnalysisOptions,
    fence: Fence | None,
    reduced,
    drift,
) -> dict:
    """The day's report.html, then `_ANALYSED`: what the analysis found, written last; then the
    scratch folder goes."""
    _check(fence, "write the day's report")
    report = write_report(output_dir, job.embedding_job_url)
    record = {
        "day": day,
        **reduced,
        "report": report,
        "duplicates": counts,
        "drift": {
            key: drift.get(key)
            for key in ("verdict", "threshold", "effective_threshold", "reference_days", "reason")
        }
        | {"figures": drift.get("figures")},
        "finished_at": utc_now(),
    }
    _check(fence, "mark the day's analysis finished")
    files.write_json(join(output_dir, ANALYSIS_MARKER), record)
    files.delete_folder(scratch)
    return record


def build(
    pipeline: beam.Pipeline,
    job: AnalysisOptions,
    output_dir: str,
    fingerprint: str | None,
    history: History,
    scratch: str,
    fence: Fence | None,
) -> None:
    """The job's graph: each earlier day's search is its own element, spread over workers."""
    day = posixpath.basename(output_dir)
    floor = job.duplicate_threshold - CANDIDATE_MARGIN
    reduced = (
        pipeline
        | "Day" >> beam.Create([output_dir])
        | "Reduce and index" >> beam.Map(reduce_and_index, job, fence)
    )
    spooled = reduced | "Project onto earlier axes" >> beam.Map(
        project_for_earlier_days, output_dir, list(history.days), scratch
    )
    earlier = (
        pipeline
        | "Earlier days" >> beam.Create(list(history.days))
        | "Spread the days" >> beam.Reshuffle()
        | "Search each earlier day"
        >> beam.Map(search_earlier_day, output_dir, scratch, floor, AsSingleton(spooled))
    )
    within = reduced | "Search within the day" >> beam.Map(
        search_the_day, output_dir, scratch, floor
    )
    counts = (
        (earlier, within)
        | "Searches" >> beam.Flatten()
        | "All searched" >> beam.combiners.ToList()
        | "Confirm duplicates"
        >> beam.Map(
            confirm_duplicates,
            output_dir,
            day,
            history,
            job.duplicate_threshold,
            scratch,
            fence,
        )
    )
    drift = reduced | "Drift" >> beam.Map(measure, output_dir, day, fingerprint, job, fence)
    _ = counts | "Write the report and _ANALYSED" >> beam.Map(
        finish, output_dir, day, scratch, job, fence, AsSingleton(reduced), AsSingleton(drift)
    )


def scratch_folder(job: AnalysisOptions, options, day: str) -> str:
    """The job's intermediate files: `--scratch`, else under `--temp_location`, else local."""
    if job.scratch:
        return job.scratch
    name = f"image-embeddings-analysis-{day}-{uuid.uuid4().hex[:12]}"
    temp = options.view_as(GoogleCloudOptions).temp_location
    return join(temp, name) if temp else tempfile.mkdtemp(prefix=name + "-")


def fingerprint_of(output_dir: str) -> str | None:
    """The model fingerprint of the day's finished run."""
    return success_record(output_dir, files).get(FINGERPRINT_KEY)


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> Any:
    """argv -> options -> build -> run; waits unless the job runs on Dataflow.

    Returns Beam's PipelineResult (for a Dataflow `--dry_run=True`, `result.job` is the built
    job, whose earlier days are the whole lookback window, unchecked).
    """
    job, beam_args = parse_known_args(argv)
    pipeline = test_pipeline or beam.Pipeline(options=pipeline_options(beam_args))
    options = pipeline.options
    output_dir = files.absolute(job.output).rstrip("/")
    day = posixpath.basename(output_dir)
    scratch = scratch_folder(job, options, day)
    waits = not is_dataflow(options)
    if options.view_as(TestOptions).dry_run:
        history = History(days=tuple(window(day, job.lookback_days)), skipped={})
        build(pipeline, job, output_dir, None, history, scratch, fence_of(job, None))
        result = pipeline.run()
        LOGGER.info("dry run: the analysis job was built and not submitted")
        return result
    taken = take_day(job, options)
    try:
        fence = fence_of(job, taken)
        fingerprint = fingerprint_of(output_dir)
        fence.check("clear the day's earlier analysis")
        files.delete(join(output_dir, ANALYSIS_MARKER))
        history = comparable_history(output_dir, day, fingerprint, job.lookback_days)
        build(pipeline, job, output_dir, fingerprint, history, scratch, fence)
        LOGGER.info(
            "analysing %s: duplicates against %d earlier days, scratch %s",
            output_dir,
            len(history.days),
            scratch,
        )
        with renewal(job, options, fence) if waits else contextlib.nullcontext():
            result = pipeline.run()
            if waits:
                result.wait_until_finish()
    finally:
        give_back(taken, options, job_ended=waits)
    if not waits:
        LOGGER.info("analysis job submitted; `_ANALYSED` marks its end")
    return result

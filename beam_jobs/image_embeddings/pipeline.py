"""The embedding pipeline: manifest -> images -> RunInference -> Parquet, and its launcher."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    TestOptions,
    WorkerOptions,
)
from apache_beam.runners.runner import PipelineResult, PipelineState

from beam_jobs.image_embeddings import io
from beam_jobs.image_embeddings.contract import STAGE_INFERENCE, manifest_entries
from beam_jobs.image_embeddings.images import (
    FAILED_TAG,
    METRICS_NAMESPACE,
    LoadedImage,
    LoadImageFn,
)
from beam_jobs.image_embeddings.models import KerasModelHandler, ModelSpec, resolve_model
from beam_jobs.image_embeddings.options import JobOptions, parse_known_args
from beam_jobs.image_embeddings.outputs import (
    CommitOutput,
    WriteEmbeddings,
    WriteFailures,
    embedding_row,
    failure_row,
    read_success_marker,
    remove_earlier_shards,
    remove_success_marker,
    utc_now,
)
from beam_jobs.image_embeddings.progress import (
    EMBEDDED,
    ProgressReporter,
    TrackProgress,
    batch_size_stats,
    failed_counter,
    summary_line,
)

LOGGER = logging.getLogger(__name__)

SETUP_FILE = Path(__file__).resolve().parents[1] / "setup.py"

# What RunInference's keyed handler carries beside each image: its URI and original size.
ImageKey = tuple[str, int, int]


def parse_line(line: str) -> list[str]:
    """The manifest entry of one line: `[uri]`, or `[]` for a blank or `#` comment line."""
    return list(manifest_entries([line]))


def extra_copies(entry_count: tuple[str, int]) -> int:
    return entry_count[1] - 1


def key_image(element: tuple[str, LoadedImage]) -> tuple[ImageKey, np.ndarray]:
    uri, image = element
    return (uri, image.width, image.height), image.pixels


def inference_failure(uri: str, error: str) -> dict[str, str]:
    failed_counter(STAGE_INFERENCE).inc()
    return {"uri": uri, "stage": STAGE_INFERENCE, "error": error}


def failed_batch(element: tuple[list, tuple]) -> Iterator[dict[str, str]]:
    """Failures for every image of a batch the model raised on (RunInference's dead letters)."""
    batch, (_, error, _) = element
    for (uri, _, _), _ in batch:
        yield inference_failure(uri, f"model call failed: {error}")


class ReadManifest(beam.PTransform):
    """Manifest URI -> (distinct image URIs, number of duplicate lines as one int).

    Lines are stripped (CRLF too); blank and `#` lines are skipped. Each URI comes out once,
    however often it is listed, so every entry ends exactly once in the outputs.
    """

    def __init__(self, manifest: str) -> None:
        super().__init__()
        self._manifest = manifest

    def expand(self, pbegin):
        counted = (
            pbegin
            # No validation at build time: a Dataflow job is built offline; the launcher checks.
            | "ReadLines" >> beam.io.ReadFromText(self._manifest, validate=False)
            | "ParseEntries" >> beam.FlatMap(parse_line)
            | "CountEntries" >> beam.combiners.Count.PerElement()
        )
        uris = counted | "DistinctUris" >> beam.Keys()
        duplicates = (
            counted
            | "ExtraCopies" >> beam.Map(extra_copies)
            | "CountDuplicates" >> beam.CombineGlobally(sum)
        )
        return uris, duplicates


class ToEmbeddingRows(beam.DoFn):
    """(key, embedding) -> an embeddings row; a non-finite embedding becomes a failure."""

    def __init__(self, model: str, dtype: str) -> None:
        self._model = model
        self._dtype = dtype

    def process(self, element: tuple[ImageKey, np.ndarray]):
        (uri, width, height), embedding = element
        if not np.all(np.isfinite(embedding)):
            yield beam.pvalue.TaggedOutput(
                FAILED_TAG, inference_failure(uri, "model output is not finite (NaN or inf)")
            )
            return
        EMBEDDED.inc()
        yield embedding_row(uri, width, height, embedding, self._model, self._dtype)


class EmbedImages(beam.PTransform):
    """Image URIs -> (embedding rows, failure rows): load, RunInference in batches, rows."""

    def __init__(self, job: JobOptions, spec: ModelSpec) -> None:
        super().__init__()
        self._job = job
        self._spec = spec

    def expand(self, uris):
        job, spec = self._job, self._spec
        loaded = uris | "LoadImages" >> beam.ParDo(
            # Two batches ahead: the next batch loads while the model embeds this one.
            LoadImageFn(
                spec.input_size, job.max_image_bytes, job.input_root, prefetch=2 * job.batch_size
            )
        ).with_outputs(FAILED_TAG, main="images")
        handler = KeyedModelHandler(
            KerasModelHandler(
                job.model,
                job.weights,
                precision=job.precision,
                min_batch_size=job.batch_size,
                max_batch_size=job.batch_size,
                jit_compile=job.jit_compile,
            )
        )
        embedded, dead_letters = (
            loaded.images
            | "KeyImages" >> beam.Map(key_image)
            | "RunInference"
            >> RunInference(handler, metrics_namespace=METRICS_NAMESPACE).with_exception_handling()
        )
        rows = embedded | "ToEmbeddingRows" >> beam.ParDo(
            ToEmbeddingRows(spec.name, job.embedding_dtype)
        ).with_outputs(FAILED_TAG, main="rows")
        failures = (
            (
                loaded[FAILED_TAG],
                dead_letters.failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch),
                rows[FAILED_TAG],
            )
            | "AllFailures" >> beam.Flatten()
            | "ToFailureRows" >> beam.Map(failure_row, spec.name)
        )
        return rows.rows, failures


def build_pipeline(
    pipeline: beam.Pipeline,
    job: JobOptions,
    spec: ModelSpec,
    run_info: dict[str, Any],
    total: int | None,
) -> None:
    """Add the whole job to `pipeline`: read, embed, write, track progress, commit."""
    uris, duplicates = pipeline | "ReadManifest" >> ReadManifest(job.manifest)
    rows, failures = uris | "EmbedImages" >> EmbedImages(job, spec)
    embeddings_files = rows | "WriteEmbeddings" >> WriteEmbeddings(
        job.output, spec.dim, job.embedding_dtype, job.num_shards
    )
    failures_files = failures | "WriteFailures" >> WriteFailures(job.output)
    _ = (
        (rows, failures)
        | "FinishedEntries" >> beam.Flatten()
        | "TrackProgress"
        >> beam.ParDo(TrackProgress(total, job.progress_interval_secs, os.getpid()))
    )
    _ = {
        "embeddings_files": embeddings_files,
        "failures_files": failures_files,
        "uris": uris,
        "embeddings": rows,
        "failures": failures,
        "duplicates": duplicates,
    } | "CommitOutput" >> CommitOutput(job.output, run_info, spec.dim)


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


def prepare_launch(job: JobOptions, count: bool) -> int | None:
    """Check the manifest, remove the earlier run's `_SUCCESS`, then its shards; count the
    entries if asked."""
    if not io.exists(job.manifest):
        raise FileNotFoundError(f"manifest not found: {job.manifest}")
    remove_success_marker(job.output)
    remove_earlier_shards(job.output)
    return count_entries(job.manifest) if count else None


def run_info(job: JobOptions, spec: ModelSpec, options: PipelineOptions) -> dict[str, Any]:
    """What the `_SUCCESS` marker records about how the run was made."""
    return {
        "model": spec.name,
        "weights": job.weights,
        "precision": job.precision,
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
    total = None if dry_run else prepare_launch(job, count=waits)
    build_pipeline(pipeline, job, spec, run_info(job, spec, options), total)
    LOGGER.info(
        "embedding %s entries of %s into %s with %s (%s weights, %s)",
        "the" if total is None else total,
        job.manifest,
        job.output,
        spec.name,
        job.weights,
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

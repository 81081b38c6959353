"""The embedding pipeline's graph: manifest -> images -> RunInference -> Parquet -> commit."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from beam_jobs.image_embeddings.contract import METRICS_NAMESPACE, STAGE_INFERENCE, manifest_entries
from beam_jobs.image_embeddings.images import FAILED_TAG, LoadedImage, LoadImageFn
from beam_jobs.image_embeddings.models import KerasModelHandler, ModelSpec
from beam_jobs.image_embeddings.options import JobOptions
from beam_jobs.image_embeddings.outputs import (
    CommitOutput,
    WriteEmbeddings,
    WriteFailures,
    embedding_row,
    failure_row,
)
from beam_jobs.image_embeddings.progress import EMBEDDED, TrackProgress, failed_counter

# What RunInference's keyed handler carries beside each image: URI, original size, thumbnail.
ImageKey = tuple[str, int, int, bytes]


def parse_line(line: str) -> list[str]:
    """The manifest entry of one line: `[uri]`, or `[]` for a blank or `#` comment line."""
    return list(manifest_entries([line]))


def extra_copies(entry_count: tuple[str, int]) -> int:
    return entry_count[1] - 1


def key_image(element: tuple[str, LoadedImage]) -> tuple[ImageKey, np.ndarray]:
    uri, image = element
    return (uri, image.width, image.height, image.thumbnail), image.pixels


def inference_failure(uri: str, error: str) -> dict[str, str]:
    failed_counter(STAGE_INFERENCE).inc()
    return {"uri": uri, "stage": STAGE_INFERENCE, "error": error}


def failed_batch(element: tuple[list, tuple]) -> Iterator[dict[str, str]]:
    """Failures for every image of a batch the model raised on (RunInference's dead letters)."""
    batch, (_, error, _) = element
    for (uri, *_), _ in batch:
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
        (uri, width, height, thumbnail), embedding = element
        if not np.all(np.isfinite(embedding)):
            yield beam.pvalue.TaggedOutput(
                FAILED_TAG, inference_failure(uri, "model output is not finite (NaN or inf)")
            )
            return
        EMBEDDED.inc()
        yield embedding_row(
            uri, width, height, embedding, self._model, self._dtype, thumbnail=thumbnail
        )


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

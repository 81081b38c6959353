"""The embedding pipeline's graph: manifest -> images -> RunInference -> Parquet -> commit."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from beam_jobs.image_embeddings.contract import (
    FINGERPRINT_KEY,
    METRICS_NAMESPACE,
    STAGE_INFERENCE,
    manifest_entries,
)
from beam_jobs.image_embeddings.engine.models import KerasModelHandler, ModelSpec
from beam_jobs.image_embeddings.engine.openvino import OpenVINOModelHandler
from beam_jobs.image_embeddings.images import FAILED_TAG, LoadedImage, LoadImageFn
from beam_jobs.image_embeddings.options import JobOptions
from beam_jobs.image_embeddings.outputs import (
    CommitOutput,
    ImageFacts,
    WriteEmbeddings,
    WriteFailures,
    embedding_row,
    failure_row,
    image_facts,
)
from beam_jobs.image_embeddings.progress import EMBEDDED, TrackProgress, failed_counter
from beam_jobs.image_embeddings.reuse.earlier_runs import ReuseSource
from beam_jobs.image_embeddings.reuse.transforms import ReuseEarlierEmbeddings
from beam_jobs.image_embeddings.storage.lease import Fence


def parse_line(line: str) -> list[str]:
    """The manifest entry of one line: `[uri]`, or `[]` for a blank or `#` comment line."""
    return list(manifest_entries([line]))


def extra_copies(entry_count: tuple[str, int]) -> int:
    return entry_count[1] - 1


# What RunInference's keyed handler carries beside each image's pixels: the facts of its row.
# (No annotation of the NamedTuple: Beam would pick a schema coder for the key.)
def key_image(element: tuple[str, LoadedImage]) -> tuple:
    uri, image = element
    return image_facts(uri, image), image.pixels


def inference_failure(image: ImageFacts, error: str) -> dict[str, str]:
    failed_counter(STAGE_INFERENCE).inc()
    return {"uri": image.uri, "stage": STAGE_INFERENCE, "error": error, "sha256": image.sha256}


def failed_batch(element: tuple[list, tuple]) -> Iterator[dict[str, str]]:
    """Failures for every image of a batch the model raised on (RunInference's dead letters)."""
    batch, (_, error, _) = element
    for image, _ in batch:
        yield inference_failure(image, f"model call failed: {error}")


def model_handler(job: JobOptions) -> KerasModelHandler | OpenVINOModelHandler:
    """The RunInference handler of the job's engine: its prepared model, or the Keras model."""
    if job.engine == "openvino":
        if not job.prepared_model:
            raise ValueError("the OpenVINO engine runs a prepared model: --prepared_model is unset")
        return OpenVINOModelHandler(
            job.prepared_model,
            job.model,
            job.precision,
            min_batch_size=job.batch_size,
            max_batch_size=job.batch_size,
        )
    return KerasModelHandler(
        job.model,
        job.weights,
        precision=job.precision,
        min_batch_size=job.batch_size,
        max_batch_size=job.batch_size,
        jit_compile=job.jit_compile,
    )


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


def unstorable(embedding: np.ndarray, dtype: str) -> str | None:
    """Why `embedding` cannot be stored as `dtype` (NaN, inf, or beyond its range); None if it can.

    float16 holds magnitudes up to 65504: a larger value would be stored as infinity.
    """
    values = np.asarray(embedding)
    if not np.all(np.isfinite(values)):
        return "model output is not finite (NaN or inf)"
    largest = float(np.max(np.abs(values), initial=0.0))
    limit = float(np.finfo(dtype).max)
    if largest > limit:
        return (
            f"model output {largest:.6g} is out of range for {dtype} (largest {limit:.6g}); "
            "store it with --embedding_dtype float32"
        )
    return None


class ToEmbeddingRows(beam.DoFn):
    """(key, embedding) -> an embeddings row; one that `dtype` cannot hold becomes a failure."""

    def __init__(self, model: str, dtype: str) -> None:
        self._model = model
        self._dtype = dtype

    def process(self, element: tuple[ImageFacts, np.ndarray]):
        image, embedding = element
        reason = unstorable(embedding, self._dtype)
        if reason is not None:
            yield beam.pvalue.TaggedOutput(FAILED_TAG, inference_failure(image, reason))
            return
        EMBEDDED.inc()
        yield embedding_row(image, embedding, self._model, self._dtype)


class EmbedImages(beam.PTransform):
    """Image URIs -> (embedding rows, failure rows): copy what earlier runs embedded (matched by
    digest before decoding), load and RunInference in batches over the rest, rows."""

    def __init__(
        self, job: JobOptions, spec: ModelSpec, reuse_from: Sequence[ReuseSource] = ()
    ) -> None:
        super().__init__()
        self._job = job
        self._spec = spec
        self._reuse_from = list(reuse_from)

    def expand(self, uris):
        job, spec = self._job, self._spec
        # Two batches ahead: the next batch loads while the model embeds this one.
        load = LoadImageFn(
            spec.input_size, job.max_image_bytes, job.input_root, prefetch=2 * job.batch_size
        )
        copied, unread = (), ()
        if self._reuse_from:
            hasher = LoadImageFn(
                spec.input_size, job.max_image_bytes, job.input_root, load.prefetch, decode=False
            )
            uris, reused, unreadable = uris | "ReuseEarlierEmbeddings" >> ReuseEarlierEmbeddings(
                self._reuse_from, hasher, spec.name, job.embedding_dtype
            )
            copied, unread = (reused,), (unreadable,)
        loaded = uris | "LoadImages" >> beam.ParDo(load).with_outputs(FAILED_TAG, main="images")
        handler = KeyedModelHandler(model_handler(job))
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
                *unread,
                loaded[FAILED_TAG],
                dead_letters.failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch),
                rows[FAILED_TAG],
            )
            | "AllFailures" >> beam.Flatten()
            | "ToFailureRows" >> beam.Map(failure_row, spec.name)
        )
        all_rows = (rows.rows, *copied) | "AllRows" >> beam.Flatten()
        return all_rows, failures


def build_pipeline(
    pipeline: beam.Pipeline,
    job: JobOptions,
    spec: ModelSpec,
    run_info: dict[str, Any],
    total: int | None,
    reuse_from: Sequence[ReuseSource] = (),
    fence: Fence | None = None,
) -> None:
    """Add the whole job to `pipeline`: read, embed (reusing `reuse_from`), write, track
    progress, commit (while `fence` holds, when given)."""
    uris, duplicates = pipeline | "ReadManifest" >> ReadManifest(job.manifest)
    rows, failures = uris | "EmbedImages" >> EmbedImages(job, spec, reuse_from)
    embeddings_files = rows | "WriteEmbeddings" >> WriteEmbeddings(
        job.output, spec.dim, job.embedding_dtype, job.num_shards, run_info.get(FINGERPRINT_KEY)
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
    } | "CommitOutput" >> CommitOutput(job.output, run_info, spec.dim, fence)

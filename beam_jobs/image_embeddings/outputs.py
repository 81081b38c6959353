"""What a run leaves under --output: Parquet shards, stale files removed, `_SUCCESS` last."""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.pvalue import AsList, AsSingleton

from beam_jobs.image_embeddings.contract import (
    EMBEDDINGS_PREFIX,
    FAILURES_PREFIX,
    PREVIOUS_RUN_FOLDER,
    SHARD_NUMBER,
    SHARD_SUFFIX,
    SHARD_TEMPLATE,
    SUCCESS_MARKER,
    embeddings_schema,
    failures_schema,
    join,
    shard_glob,
)
from beam_jobs.image_embeddings.marker import success_record
from beam_jobs.image_embeddings.storage import day_outputs, io
from beam_jobs.image_embeddings.storage.lease import Fence

LOGGER = logging.getLogger(__name__)


class ImageFacts(NamedTuple):
    """What a row says about an image besides its embedding; it travels with the pixels."""

    uri: str
    width: int
    height: int
    sha256: str
    size_bytes: int
    thumbnail: bytes | None = None


def image_facts(uri: str, image: Any) -> ImageFacts:
    """The facts of a loaded image (`images.LoadedImage`) listed under `uri`."""
    return ImageFacts(
        uri, image.width, image.height, image.sha256, image.size_bytes, image.thumbnail
    )


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def embedding_row(
    image: ImageFacts,
    embedding: np.ndarray,
    model: str,
    dtype: str,
    reused_from: str | None = None,
) -> dict[str, Any]:
    """A row of `embeddings-*.parquet`; `dtype` is the stored float type, `reused_from` the day
    an earlier run embedded the same bytes on (None: embedded by this run)."""
    return {
        "uri": image.uri,
        "embedding": np.asarray(embedding, dtype=dtype),
        "model": model,
        "width": image.width,
        "height": image.height,
        "sha256": image.sha256,
        "size_bytes": image.size_bytes,
        "reused_from": reused_from,
        "thumbnail": image.thumbnail,
    }


def failure_row(failure: Mapping[str, str | None], model: str) -> dict[str, str | None]:
    """A row of `failures-*.parquet` from a `{"uri", "stage", "error", "sha256"?}` failure."""
    return {
        "uri": failure["uri"],
        "stage": failure["stage"],
        "error": failure["error"],
        "model": model,
        "sha256": failure.get("sha256"),
    }


def is_reused(row: Mapping[str, Any]) -> bool:
    return row["reused_from"] is not None


def embedding_length(row: Mapping[str, Any]) -> int:
    return len(row["embedding"])


def shard_paths(output: str, prefix: str, count: int) -> list[str]:
    """The names Beam gives `count` shards of one output kind."""
    stem = join(output, prefix)
    return [f"{stem}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}" for index in range(count)]


def shard_count(written: Iterable[str]) -> int:
    """The shard count of one write, read from the names of the files it reported."""
    counts = set()
    for path in written:
        matched = SHARD_NUMBER.search(posixpath.basename(path))
        if not matched:
            raise ValueError(f"unexpected shard name {path!r}: expected *{SHARD_TEMPLATE}.parquet")
        counts.add(int(matched[2]))
    if len(counts) != 1:
        raise RuntimeError(
            f"cannot tell which shards this run wrote (shard counts seen: {sorted(counts)}); "
            "rerun the job"
        )
    return counts.pop()


def single_dim(dims: Iterable[int], declared: int | None) -> int | None:
    """The embeddings' one dimension; `declared` (the model's) when nothing was embedded."""
    seen = set(dims)
    if len(seen) > 1:
        raise RuntimeError(f"embeddings of different lengths in one run: {sorted(seen)}")
    if declared is not None and seen and seen != {declared}:
        raise RuntimeError(f"embeddings have length {seen.pop()}, the model declares {declared}")
    return seen.pop() if seen else declared


def marker_path(output: str) -> str:
    return join(output, SUCCESS_MARKER)


def _listing(output: str) -> list[str]:
    """Every file under `output`, through Beam's filesystems."""
    return io.matching(join(output, "**"))


def _delete_one(path: str) -> None:
    io.delete([path])


def remove_earlier_run(output: str) -> list[str]:
    """Delete what an earlier run wrote under `output` (`_SUCCESS` first), before this run writes.

    The manifest, the skip record and the lease stay: they are this run's inputs.
    """
    return day_outputs.remove(output, _listing(output), _delete_one, day_outputs.earlier_run)


def read_success_marker(output: str) -> dict[str, Any]:
    return success_record(output, io)


class WriteEmbeddings(beam.PTransform):
    """Embedding rows -> `embeddings-SSSSS-of-NNNNN.parquet`; outputs the written paths."""

    def __init__(
        self,
        output: str,
        dim: int | None,
        dtype: str,
        num_shards: int = 0,
        model_fingerprint: str | None = None,
    ) -> None:
        super().__init__()
        self._output = output
        self._schema = embeddings_schema(dim, dtype, model_fingerprint)
        self._num_shards = num_shards

    def expand(self, rows):
        return rows | "WriteParquet" >> beam.io.WriteToParquet(
            join(self._output, EMBEDDINGS_PREFIX),
            self._schema,
            file_name_suffix=SHARD_SUFFIX,
            num_shards=self._num_shards,
            shard_name_template=SHARD_TEMPLATE,
        )


class WriteFailures(beam.PTransform):
    """Failure rows -> one `failures-00000-of-00001.parquet`, empty when nothing failed."""

    def __init__(self, output: str) -> None:
        super().__init__()
        self._output = output

    def expand(self, rows):
        # One shard: failures are few, and an empty run still leaves a readable (empty) file.
        return rows | "WriteParquet" >> beam.io.WriteToParquet(
            join(self._output, FAILURES_PREFIX),
            failures_schema(),
            file_name_suffix=SHARD_SUFFIX,
            num_shards=1,
            shard_name_template=SHARD_TEMPLATE,
        )


class _CommitFn(beam.DoFn):
    """Runs once, after both writes: checks the counts, removes stale files, writes `_SUCCESS`,
    then deletes the earlier run's embeddings that the launch had set aside for reuse.

    With a `fence`, each deletion and the marker first check that the run still holds the day.
    """

    def __init__(
        self,
        output: str,
        run_info: Mapping[str, Any],
        declared_dim: int | None,
        fence: Fence | None,
    ):
        self._output = output
        self._run_info = dict(run_info)
        self._declared_dim = declared_dim
        self._fence = fence

    def _check_fence(self, action: str) -> None:
        if self._fence is not None:
            self._fence.check(action)

    def process(
        self,
        unused_element: None,
        embeddings_files: list[str],
        failures_files: list[str],
        images: int,
        embedded: int,
        failed: int,
        duplicates: int,
        reused: int,
        dims: list[int],
    ) -> Iterator[dict[str, Any]]:
        if embedded + failed != images:
            raise RuntimeError(
                f"{embedded} embedded + {failed} failed != {images} manifest entries; "
                f"not writing {SUCCESS_MARKER}"
            )
        kept = {
            prefix: self._expected(prefix, written)
            for prefix, written in (
                (EMBEDDINGS_PREFIX, embeddings_files),
                (FAILURES_PREFIX, failures_files),
            )
        }
        names = [name for shards in kept.values() for name in shards]
        self._check_fence("delete files this run did not write")
        day_outputs.remove(
            self._output,
            _listing(self._output),
            _delete_one,
            day_outputs.not_written_by(names),
        )
        finished_at = utc_now()
        started = datetime.fromisoformat(self._run_info["started_at"])
        record = {
            "images": images,
            "embedded": embedded,
            "failed": failed,
            "duplicates": duplicates,
            "reused": reused,
            "dim": single_dim(dims, self._declared_dim),
            **self._run_info,
            "finished_at": finished_at,
            "duration_s": round((datetime.fromisoformat(finished_at) - started).total_seconds(), 3),
            "beam_version": beam.__version__,
            "embeddings_files": kept[EMBEDDINGS_PREFIX],
            "failures_files": kept[FAILURES_PREFIX],
        }
        self._check_fence(f"write {SUCCESS_MARKER}")
        io.write_text(
            marker_path(self._output), json.dumps(record, indent=2) + "\n", "application/json"
        )
        # Only now: had the run died before its marker, a rerun would still find them.
        self._check_fence("delete the earlier run's embeddings set aside for reuse")
        io.delete_folders(io.folders_matching(self._output, PREVIOUS_RUN_FOLDER))
        yield record

    def _expected(self, prefix: str, written: list[str]) -> list[str]:
        """The names of this run's `prefix` shards; every one must exist."""
        expected = shard_paths(self._output, prefix, shard_count(written))
        missing = sorted(set(expected) - set(io.matching(shard_glob(self._output, prefix))))
        if missing:
            raise RuntimeError(f"shards reported written are missing: {missing}")
        return [posixpath.basename(path) for path in expected]


class CommitOutput(beam.PTransform):
    """Completes a run once everything is written: exactly this run's files, then `_SUCCESS`.

    Input: a dict of PCollections, `embeddings_files` and `failures_files` (paths the writes
    report), `uris` (distinct manifest entries), `embeddings` and `failures` (rows), `duplicates`
    (one int). `run_info` goes into the marker as is (model, weights, started_at, ...); the
    marker counts `reused`, the embeddings rows copied from earlier runs. `fence`: the run's
    hold on the day, checked before each deletion and the marker (None: unfenced).
    Output: the marker's record.
    """

    def __init__(
        self,
        output: str,
        run_info: Mapping[str, Any],
        declared_dim: int | None,
        fence: Fence | None = None,
    ):
        super().__init__()
        self._output = output
        self._run_info = dict(run_info)
        self._declared_dim = declared_dim
        self._fence = fence

    def expand(self, inputs: Mapping[str, beam.PCollection]):
        count = beam.combiners.Count.Globally
        dims = (
            inputs["embeddings"]
            | "EmbeddingLengths" >> beam.Map(embedding_length)
            | "DistinctLengths" >> beam.Distinct()
        )
        return (
            inputs["uris"].pipeline
            | "Once" >> beam.Create([None])
            | "Commit"
            >> beam.ParDo(
                _CommitFn(self._output, self._run_info, self._declared_dim, self._fence),
                embeddings_files=AsList(inputs["embeddings_files"]),
                failures_files=AsList(inputs["failures_files"]),
                images=AsSingleton(inputs["uris"] | "CountImages" >> count()),
                embedded=AsSingleton(inputs["embeddings"] | "CountEmbedded" >> count()),
                reused=AsSingleton(
                    inputs["embeddings"]
                    | "ReusedRows" >> beam.Filter(is_reused)
                    | "CountReused" >> count()
                ),
                failed=AsSingleton(inputs["failures"] | "CountFailed" >> count()),
                duplicates=AsSingleton(inputs["duplicates"]),
                dims=AsList(dims),
            )
        )

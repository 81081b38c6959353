"""What a run leaves under --output: Parquet shards, stale files removed, `_SUCCESS` last."""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.pvalue import AsList, AsSingleton

from beam_jobs.image_embeddings import io
from beam_jobs.image_embeddings.contract import (
    EMBEDDINGS_PREFIX,
    FAILURES_PREFIX,
    SHARD_NUMBER,
    SHARD_SUFFIX,
    SHARD_TEMPLATE,
    SUCCESS_MARKER,
    embeddings_schema,
    failures_schema,
    join,
    shard_glob,
)

LOGGER = logging.getLogger(__name__)

# FileBasedSink stages each write in `<output>/beam-temp-<prefix>-<uuid>/`.
_TEMP_FOLDERS = "beam-temp-{prefix}-*"


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def embedding_row(
    uri: str,
    width: int,
    height: int,
    embedding: np.ndarray,
    model: str,
    dtype: str,
    thumbnail: bytes | None = None,
) -> dict[str, Any]:
    """A row of `embeddings-*.parquet`; `dtype` is the stored float type."""
    return {
        "uri": uri,
        "embedding": np.asarray(embedding, dtype=dtype),
        "model": model,
        "width": width,
        "height": height,
        "thumbnail": thumbnail,
    }


def failure_row(failure: Mapping[str, str], model: str) -> dict[str, str]:
    """A row of `failures-*.parquet` from a `{"uri", "stage", "error"}` failure."""
    return {
        "uri": failure["uri"],
        "stage": failure["stage"],
        "error": failure["error"],
        "model": model,
    }


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


def stale_files(existing: Iterable[str], expected: Iterable[str]) -> list[str]:
    """Files of an earlier run: present but not among this run's shards."""
    return sorted(set(existing) - set(expected))


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


def remove_success_marker(output: str) -> bool:
    """Delete `_SUCCESS` under `output` so readers never take a run in progress as complete."""
    marker = marker_path(output)
    if not io.exists(marker):
        return False
    io.delete([marker])
    LOGGER.info("removed the earlier run's %s", marker)
    return True


def remove_earlier_shards(output: str) -> list[str]:
    """Delete the shards an earlier run left under `output`, before this run writes its own.

    Beam's file sink takes a final shard that already exists with the same checksum (for local
    files: the same size) as its own earlier attempt: it keeps that file, deletes the new one and
    reports no path for it. A rerun would then keep the earlier run's file, and a day without
    failures (one empty failures shard, as before) could not be rerun at all.
    """
    earlier = [
        path
        for prefix in (EMBEDDINGS_PREFIX, FAILURES_PREFIX)
        for path in io.matching(shard_glob(output, prefix))
    ]
    if earlier:
        LOGGER.info("removing the earlier run's shards: %s", earlier)
        io.delete(earlier)
    return earlier


def read_success_marker(output: str) -> dict[str, Any]:
    return json.loads(io.read_text(marker_path(output)))


class WriteEmbeddings(beam.PTransform):
    """Embedding rows -> `embeddings-SSSSS-of-NNNNN.parquet`; outputs the written paths."""

    def __init__(self, output: str, dim: int | None, dtype: str, num_shards: int = 0) -> None:
        super().__init__()
        self._output = output
        self._schema = embeddings_schema(dim, dtype)
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
    """Runs once, after both writes: checks the counts, removes stale files, writes `_SUCCESS`."""

    def __init__(self, output: str, run_info: Mapping[str, Any], declared_dim: int | None):
        self._output = output
        self._run_info = dict(run_info)
        self._declared_dim = declared_dim

    def process(
        self,
        unused_element: None,
        embeddings_files: list[str],
        failures_files: list[str],
        images: int,
        embedded: int,
        failed: int,
        duplicates: int,
        dims: list[int],
    ) -> Iterator[dict[str, Any]]:
        if embedded + failed != images:
            raise RuntimeError(
                f"{embedded} embedded + {failed} failed != {images} manifest entries; "
                f"not writing {SUCCESS_MARKER}"
            )
        kept = {
            prefix: self._keep_only(prefix, written)
            for prefix, written in (
                (EMBEDDINGS_PREFIX, embeddings_files),
                (FAILURES_PREFIX, failures_files),
            )
        }
        finished_at = utc_now()
        started = datetime.fromisoformat(self._run_info["started_at"])
        record = {
            "images": images,
            "embedded": embedded,
            "failed": failed,
            "duplicates": duplicates,
            "dim": single_dim(dims, self._declared_dim),
            **self._run_info,
            "finished_at": finished_at,
            "duration_s": round((datetime.fromisoformat(finished_at) - started).total_seconds(), 3),
            "beam_version": beam.__version__,
            "embeddings_files": kept[EMBEDDINGS_PREFIX],
            "failures_files": kept[FAILURES_PREFIX],
        }
        io.write_text(
            marker_path(self._output), json.dumps(record, indent=2) + "\n", "application/json"
        )
        yield record

    def _keep_only(self, prefix: str, written: list[str]) -> list[str]:
        """Delete every `prefix` shard and staging folder that this run did not write."""
        expected = shard_paths(self._output, prefix, shard_count(written))
        existing = io.matching(shard_glob(self._output, prefix))
        missing = sorted(set(expected) - set(existing))
        if missing:
            raise RuntimeError(f"shards reported written are missing: {missing}")
        stale = stale_files(existing, expected)
        leftovers = io.folders_matching(self._output, _TEMP_FOLDERS.format(prefix=prefix))
        if stale or leftovers:
            LOGGER.info("removing files of an earlier run: %s", stale + leftovers)
        io.delete(stale)
        io.delete_folders(leftovers)
        return [posixpath.basename(path) for path in expected]


class CommitOutput(beam.PTransform):
    """Completes a run once everything is written: exactly this run's files, then `_SUCCESS`.

    Input: a dict of PCollections, `embeddings_files` and `failures_files` (paths the writes
    report), `uris` (distinct manifest entries), `embeddings` and `failures` (rows), `duplicates`
    (one int). `run_info` goes into the marker as is (model, weights, started_at, ...).
    Output: the marker's record.
    """

    def __init__(self, output: str, run_info: Mapping[str, Any], declared_dim: int | None):
        super().__init__()
        self._output = output
        self._run_info = dict(run_info)
        self._declared_dim = declared_dim

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
                _CommitFn(self._output, self._run_info, self._declared_dim),
                embeddings_files=AsList(inputs["embeddings_files"]),
                failures_files=AsList(inputs["failures_files"]),
                images=AsSingleton(inputs["uris"] | "CountImages" >> count()),
                embedded=AsSingleton(inputs["embeddings"] | "CountEmbedded" >> count()),
                failed=AsSingleton(inputs["failures"] | "CountFailed" >> count()),
                duplicates=AsSingleton(inputs["duplicates"]),
                dims=AsList(dims),
            )
        )

"""Reuse instead of recompute: an image whose bytes an earlier run embedded gets that embedding."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs.image_embeddings.contract import METRICS_NAMESPACE
from beam_jobs.image_embeddings.images import FAILED_TAG, HashedImage, LoadImageFn
from beam_jobs.image_embeddings.outputs import ImageFacts, embedding_row
from beam_jobs.image_embeddings.reuse.earlier_runs import ReuseSource

# All a copy needs of an earlier run's row: the embedding and what decoding the bytes would say.
COPIED_COLUMNS = ["embedding", "width", "height", "thumbnail"]
NEW_TAG = "new"
PARQUET = "application/x-parquet"
REUSED = Metrics.counter(METRICS_NAMESPACE, "reused")


class EarlierRow(NamedTuple):
    """Where an earlier run's row of some bytes lies; the largest is the newest day's."""

    day: str
    shard: str
    row_group: int
    index: int  # within the row group


class Wanted(NamedTuple):
    """A row of a shard's row group to copy, to the day's images with its bytes."""

    index: int
    day: str
    sha256: str
    images: list[HashedImage]


class ReadDigests(beam.DoFn):
    """An earlier run's shard -> (sha256, EarlierRow) of each row; only the digests are read."""

    def __init__(self, day_of_folder: dict[str, str]) -> None:
        self._day_of_folder = day_of_folder

    def process(self, shard: FileMetadata):
        day = self._day_of_folder[posixpath.dirname(shard.path)]
        with FileSystems.open(shard.path, mime_type=PARQUET) as stream:
            parquet = pq.ParquetFile(stream)
            for group in range(parquet.num_row_groups):
                digests = parquet.read_row_group(group, columns=["sha256"]).column(0).to_pylist()
                for index, digest in enumerate(digests):
                    yield digest, EarlierRow(day, shard.path, group, index)


class NewestEarlierRows(beam.PTransform):
    """PBegin -> (sha256, EarlierRow) of the newest earlier row of each digest.

    A combine, so each worker keeps one row per digest before the shuffle: bytes present on every
    day of the window travel as one row, never as a hot key.
    """

    def __init__(self, sources: Sequence[ReuseSource]) -> None:
        super().__init__()
        self._sources = list(sources)

    def expand(self, pbegin):
        day_of_folder = {source.folder: source.day for source in self._sources}
        return (
            pbegin
            | "ShardPatterns" >> beam.Create([source.embeddings for source in self._sources])
            | "MatchShards" >> fileio.MatchAll()
            | "SpreadShards" >> beam.Reshuffle()
            | "ReadDigests" >> beam.ParDo(ReadDigests(day_of_folder))
            | "NewestPerDigest" >> beam.CombinePerKey(max)
        )


def split_by_match(element):
    """(sha256, {"images", "earlier"}) -> ((shard, row group), Wanted) when an earlier run holds
    the bytes; else each image's URI, on the `new` output, to be decoded and embedded."""
    digest, grouped = element
    images = list(grouped["images"])
    if not images:
        return
    earlier = next(iter(grouped["earlier"]), None)
    if earlier is None:
        for image in images:
            yield beam.pvalue.TaggedOutput(NEW_TAG, image.uri)
        return
    key = (earlier.shard, earlier.row_group)
    yield key, Wanted(earlier.index, earlier.day, digest, images)


class CopyFromRowGroup(beam.DoFn):
    """((shard, row group), [Wanted]) -> rows of the day's images, each with the earlier row's
    embedding, and the size and thumbnail decoding the bytes gave."""

    def __init__(self, model: str, dtype: str) -> None:
        self._model = model
        self._dtype = dtype

    def process(self, element) -> Iterator[dict]:
        (shard, group), wanted = element
        with FileSystems.open(shard, mime_type=PARQUET) as stream:
            table = pq.ParquetFile(stream).read_row_group(group, columns=COPIED_COLUMNS)
        values = table.column("embedding").combine_chunks().flatten()
        vectors = np.asarray(values, dtype=np.float32).reshape(table.num_rows, -1)
        widths, heights, thumbnails = (
            table.column(name).to_pylist() for name in COPIED_COLUMNS[1:]
        )
        for row in wanted:
            for image in row.images:
                REUSED.inc()
                facts = ImageFacts(
                    image.uri,
                    widths[row.index],
                    heights[row.index],
                    row.sha256,
                    image.size_bytes,
                    thumbnails[row.index],
                )
                yield embedding_row(
                    facts, vectors[row.index], self._model, self._dtype, reused_from=row.day
                )


class ReuseEarlierEmbeddings(beam.PTransform):
    """The day's image URIs -> (URIs to embed, rows copied from earlier runs, read failures).

    The day's images are read and hashed (not decoded) and joined by digest with the earlier
    runs' newest row per digest; only the embeddings of matched rows are then read, one row group
    at a time. No worker holds the window.
    """

    def __init__(
        self, sources: Sequence[ReuseSource], hasher: LoadImageFn, model: str, dtype: str
    ) -> None:
        super().__init__()
        if hasher.decode:
            raise ValueError("reuse hashes the day's images before decoding: pass decode=False")
        self._sources = list(sources)
        self._hasher = hasher
        self._model = model
        self._dtype = dtype

    def expand(self, uris):
        hashed = uris | "HashImages" >> beam.ParDo(self._hasher).with_outputs(
            FAILED_TAG, main="images"
        )
        earlier = uris.pipeline | "NewestEarlierRows" >> NewestEarlierRows(self._sources)
        matched = (
            {"images": hashed.images, "earlier": earlier}
            | "JoinByDigest" >> beam.CoGroupByKey()
            | "SplitByMatch"
            # Beam's inference reads the TaggedOutput as a main output: name the keyed one.
            >> beam.FlatMap(split_by_match)
            .with_output_types(tuple[tuple[str, int], Any])
            .with_outputs(NEW_TAG, main="known")
        )
        copied = (
            matched.known
            | "GroupByRowGroup" >> beam.GroupByKey()
            | "CopyEmbeddings" >> beam.ParDo(CopyFromRowGroup(self._model, self._dtype))
        )
        return matched[NEW_TAG], copied, hashed[FAILED_TAG]

"""Reuse instead of recompute: an image whose bytes an earlier run embedded gets that embedding."""

from __future__ import annotations

import operator
import posixpath
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.parquetio import ReadAllFromParquetBatched
from apache_beam.metrics import Metrics

from beam_jobs.image_embeddings.contract import METRICS_NAMESPACE
from beam_jobs.image_embeddings.earlier_runs import ReuseSource
from beam_jobs.image_embeddings.outputs import ImageFacts, embedding_row

# All a copy needs of an earlier run's rows: the embedding and what decoding the bytes would say.
EARLIER_COLUMNS = ["sha256", "embedding", "width", "height", "thumbnail"]
REUSED = Metrics.counter(METRICS_NAMESPACE, "reused")


class EarlierEmbedding(NamedTuple):
    """What an earlier run made of some bytes, on which day."""

    day: str
    embedding: np.ndarray
    width: int
    height: int
    thumbnail: bytes | None


class KeyByDigest(beam.DoFn):
    """(file name, Arrow table of an earlier run's shard) -> (sha256, EarlierEmbedding)."""

    def __init__(self, day_of_folder: dict[str, str]) -> None:
        self._day_of_folder = day_of_folder

    def process(self, element):
        filename, table = element
        if not table.num_rows:
            return  # an earlier day on which every image failed
        day = self._day_of_folder[posixpath.dirname(filename)]
        digests = table.column("sha256").to_pylist()
        values = table.column("embedding").combine_chunks().flatten()
        vectors = np.asarray(values, dtype=np.float32).reshape(len(digests), -1)
        facts = zip(
            table.column("width").to_pylist(),
            table.column("height").to_pylist(),
            table.column("thumbnail").to_pylist(),
            strict=True,
        )
        for digest, vector, (width, height, thumbnail) in zip(digests, vectors, facts, strict=True):
            yield digest, EarlierEmbedding(day, vector, width, height, thumbnail)


class ReadEarlierEmbeddings(beam.PTransform):
    """Earlier runs' shards -> (sha256, EarlierEmbedding), read with Beam's Parquet source."""

    def __init__(self, sources: Sequence[ReuseSource]) -> None:
        super().__init__()
        self._sources = list(sources)

    def expand(self, pbegin):
        day_of_folder = {source.folder: source.day for source in self._sources}
        return (
            pbegin
            | "ShardPatterns" >> beam.Create([source.embeddings for source in self._sources])
            | "ReadParquet"
            >> ReadAllFromParquetBatched(columns=EARLIER_COLUMNS, with_filename=True)
            | "KeyByDigest" >> beam.ParDo(KeyByDigest(day_of_folder))
        )


def copied_rows(element, model: str, dtype: str) -> Iterator[dict]:
    """Rows of the day's images with one digest (`KnownBytes`), each with the newest earlier
    embedding of those bytes, and the size and thumbnail decoding them gave."""
    digest, grouped = element
    images = list(grouped["images"])
    if not images:
        return
    earlier = max(grouped["earlier"], key=operator.attrgetter("day"))
    for image in images:
        REUSED.inc()
        facts = ImageFacts(
            image.uri, earlier.width, earlier.height, digest, image.size_bytes, earlier.thumbnail
        )
        yield embedding_row(facts, earlier.embedding, model, dtype, reused_from=earlier.day)


class ReuseEarlierEmbeddings(beam.PTransform):
    """PBegin -> the earlier runs' embeddings by digest, and the set of their digests.

    Each worker holds the distinct digests (a side input of the loader, which then skips decoding
    those images); the embeddings meet the day's known images in `CopyEarlierEmbeddings`, a join
    by digest, never all in one place.
    """

    def __init__(self, sources: Sequence[ReuseSource]) -> None:
        super().__init__()
        self._sources = list(sources)

    def expand(self, pbegin):
        earlier = pbegin | "ReadEarlierEmbeddings" >> ReadEarlierEmbeddings(self._sources)
        known = earlier | "EarlierDigests" >> beam.Keys() | "KnownDigests" >> beam.combiners.ToSet()
        return earlier, known


class CopyEarlierEmbeddings(beam.PTransform):
    """(sha256, KnownBytes) of the day's images -> their rows, copied from `earlier`."""

    def __init__(self, earlier, model: str, dtype: str) -> None:
        super().__init__()
        self._earlier = earlier
        self._model = model
        self._dtype = dtype

    def expand(self, known_images):
        return (
            {"images": known_images, "earlier": self._earlier}
            | "JoinByDigest" >> beam.CoGroupByKey()
            | "CopyEmbeddings" >> beam.FlatMap(copied_rows, self._model, self._dtype)
        )

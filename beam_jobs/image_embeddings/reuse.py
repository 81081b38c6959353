"""Reuse instead of recompute: an image whose bytes an earlier run embedded gets that embedding."""

from __future__ import annotations

import operator
import posixpath
from collections.abc import Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.parquetio import ReadAllFromParquetBatched
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsSingleton

from beam_jobs.image_embeddings.contract import METRICS_NAMESPACE
from beam_jobs.image_embeddings.earlier_runs import ReuseSource
from beam_jobs.image_embeddings.outputs import embedding_row, image_facts

KNOWN_TAG = "known"
# All a lookup needs of an earlier run's rows.
EARLIER_COLUMNS = ["sha256", "embedding"]
REUSED = Metrics.counter(METRICS_NAMESPACE, "reused")


class KeyByDigest(beam.DoFn):
    """(file name, Arrow table of an earlier run's shard) -> (sha256, (day, float32 vector))."""

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
        for digest, vector in zip(digests, vectors, strict=True):
            yield digest, (day, vector)


class ReadEarlierEmbeddings(beam.PTransform):
    """Earlier runs' shards -> (sha256, (day, embedding)), read with Beam's Parquet source."""

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


class SplitKnown(beam.DoFn):
    """(uri, LoadedImage) -> itself when its digest is new; else (sha256, ImageFacts) on `known`,
    its pixels dropped."""

    def process(self, element, known):
        uri, image = element
        if image.sha256 in known:
            yield beam.pvalue.TaggedOutput(KNOWN_TAG, (image.sha256, image_facts(uri, image)))
        else:
            yield element


def copied_rows(element, model: str, dtype: str) -> Iterator[dict]:
    """Rows of the day's images with one digest, each with the newest earlier embedding of it."""
    _, grouped = element
    images = list(grouped["images"])
    if not images:
        return
    day, embedding = max(grouped["earlier"], key=operator.itemgetter(0))
    for image in images:
        REUSED.inc()
        yield embedding_row(image, embedding, model, dtype, reused_from=day)


class ReuseEarlierEmbeddings(beam.PTransform):
    """(uri, LoadedImage) -> (images still to embed, rows copied from earlier runs).

    Each worker holds the earlier runs' distinct digests (a side input); their embeddings meet the
    day's images in a join by digest, never all in one place.
    """

    def __init__(self, sources: Sequence[ReuseSource], model: str, dtype: str) -> None:
        super().__init__()
        self._sources = list(sources)
        self._model = model
        self._dtype = dtype

    def expand(self, images):
        earlier = images.pipeline | "ReadEarlierEmbeddings" >> ReadEarlierEmbeddings(self._sources)
        known = earlier | "EarlierDigests" >> beam.Keys() | "KnownDigests" >> beam.combiners.ToSet()
        split = images | "SplitKnown" >> beam.ParDo(
            SplitKnown(), known=AsSingleton(known)
        ).with_outputs(KNOWN_TAG, main="new")
        copied = (
            {"images": split[KNOWN_TAG], "earlier": earlier}
            | "JoinByDigest" >> beam.CoGroupByKey()
            | "CopyEmbeddings" >> beam.FlatMap(copied_rows, self._model, self._dtype)
        )
        return split.new, copied

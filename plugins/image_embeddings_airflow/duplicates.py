"""Exact (same sha256) and near (centred cosine) copies of a day's images, in it and earlier days.

Near duplicates are never found by comparing all pairs: each image's `NEIGHBOURS` nearest rows in
a day's neighbours index (FAISS, PCA coordinates) are the candidates, and only candidates whose
PCA-space cosine is within `CANDIDATE_MARGIN` of the threshold are checked on the full vectors.
A pair's similarity is the cosine of the two full embeddings centred on the mean of the day that
holds `duplicate_of`. Memory: the day's PCA coordinates, one other day's index and id map at a
time, one batch of embeddings, and at most `CHECK_PAIRS` candidate pairs' full vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from beam_jobs.image_embeddings.contract import (
    EMBEDDINGS_PREFIX,
    NEIGHBOURS_INDEX_NAME,
    PCA_NAME,
    join,
    shard_glob,
)
from beam_jobs.image_embeddings.neighbours import nearest
from image_embeddings_airflow import storage
from image_embeddings_airflow.day_index import read_day_index
from image_embeddings_airflow.history import comparable_days
from image_embeddings_airflow.reduction import (
    BATCH_ROWS,
    PcaAxes,
    load_pca,
    sample_rows,
    vector_batches,
)

log = logging.getLogger(__name__)

DUPLICATES_NAME = "duplicates.parquet"
EXACT = "exact"
NEAR = "near"
NEIGHBOURS = 5
# PCA coordinates keep most, not all, of the variance: a pair's cosine there may sit a little
# above or below its full-vector cosine, so candidates this far below the threshold are checked.
CANDIDATE_MARGIN = 0.05
CHECK_PAIRS = 10_000


def duplicates_schema():
    """`duplicates.parquet`: one row per image of day D and each earlier copy found of it."""
    import pyarrow as pa

    return pa.schema(
        [
            ("uri", pa.string()),
            ("duplicate_of", pa.string()),
            ("kind", pa.string()),
            ("similarity", pa.float32()),
            ("day_of_other", pa.string()),
        ]
    )


@dataclass
class Found:
    """The best copy found so far of each (uri, day of the other image)."""

    best: dict[tuple[str, str], tuple[str, str, float]] = field(default_factory=dict)

    def add(self, uri: str, other: str, kind: str, similarity: float, day: str) -> None:
        key = (uri, day)
        held = self.best.get(key)
        # An exact copy beats any near one; among near ones the most similar wins.
        if held is None or (held[1], held[2]) < (kind == EXACT, similarity):
            self.best[key] = (other, kind == EXACT, similarity)

    def rows(self) -> list[dict]:
        return [
            {
                "uri": uri,
                "duplicate_of": other,
                "kind": EXACT if exact else NEAR,
                "similarity": similarity,
                "day_of_other": day,
            }
            for (uri, day), (other, exact, similarity) in sorted(self.best.items())
        ]


@dataclass(frozen=True)
class DuplicatesResult:
    """Where `duplicates.parquet` is and what it counts."""

    uri: str
    counts: dict


def day_shards(output_dir: str) -> list[str]:
    return storage.glob(shard_glob(output_dir, EMBEDDINGS_PREFIX))


def has_column(shard: str, name: str) -> bool:
    import pyarrow.parquet as pq

    with storage.open_file(shard, "rb") as handle:
        return name in pq.ParquetFile(handle).schema_arrow.names


def uris_and_digests(shards: list[str]) -> tuple[list[str], list[str | None]]:
    """Every row's URI and sha256 in index order; None where a row (or an older shard) has none."""
    uris: list[str] = []
    digests: list[str | None] = []
    for shard in shards:
        with_digests = has_column(shard, "sha256")
        columns = ["uri", "sha256"] if with_digests else ["uri"]
        for batch in storage.parquet_batches(shard, columns, BATCH_ROWS):
            uris.extend(batch.column("uri").to_pylist())
            digests.extend(
                batch.column("sha256").to_pylist() if with_digests else [None] * batch.num_rows
            )
    return uris, digests


def exact_within(uris: list[str], digests: list[str | None], day: str, found: Found) -> None:
    """Every image whose digest an image of the day with a smaller URI already had."""
    first: dict[str, str] = {}
    for uri, digest in sorted(zip(uris, digests, strict=True)):
        if digest is None:
            continue
        if digest in first:
            found.add(uri, first[digest], EXACT, 1.0, day)
        else:
            first[digest] = uri


def exact_across(
    uris: list[str], digests: list[str | None], other: list[str], others: list, day: str, found
) -> None:
    """Rows of D whose digest a row of another day had (its first such row is the original)."""
    originals: dict[str, str] = {}
    for uri, digest in zip(other, others, strict=True):
        if digest is not None:
            originals.setdefault(digest, uri)
    for uri, digest in zip(uris, digests, strict=True):
        if digest in originals:
            found.add(uri, originals[digest], EXACT, 1.0, day)


def candidate_pairs(
    similarities: np.ndarray, ids: np.ndarray, first_row: int, floor: float
) -> Iterator[tuple[int, int]]:
    """(query row, index row) for neighbours at or above `floor`."""
    queries, columns = np.nonzero((similarities >= floor) & (ids >= 0))
    for query, column in zip(queries, columns, strict=True):
        yield first_row + int(query), int(ids[query, column])


def centred_cosines(left: np.ndarray, right: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Row-wise cosine of `left` and `right` after subtracting `mean` from both."""
    a, b = left - mean, right - mean
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(axis=1), norms, out=np.zeros(len(a)), where=norms > 0)


def gathered(shards: list[str], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The full vectors of `rows` (any order, repeats allowed) from one streaming pass."""
    picks = np.unique(rows)
    return picks, sample_rows(shards, picks)


def confirmed(
    pairs: list[tuple[int, int]], query_shards, other_shards, mean, threshold
) -> Iterator[tuple[int, int, float]]:
    """The candidate pairs whose full-vector centred cosine reaches the threshold."""
    for start in range(0, len(pairs), CHECK_PAIRS):
        chunk = np.asarray(pairs[start : start + CHECK_PAIRS], dtype=np.int64)
        query_rows, query_vectors = gathered(query_shards, chunk[:, 0])
        other_rows, other_vectors = gathered(other_shards, chunk[:, 1])
        cosines = centred_cosines(
            query_vectors[np.searchsorted(query_rows, chunk[:, 0])],
            other_vectors[np.searchsorted(other_rows, chunk[:, 1])],
            mean,
        )
        for (query, other), cosine in zip(chunk, cosines, strict=True):
            if cosine >= threshold:
                yield int(query), int(other), float(cosine)


def near_within(
    coordinates, index, shards, pca: PcaAxes, uris, digests, threshold, day, found
) -> None:
    """Near copies inside the day: of a pair, the larger URI is the duplicate of the smaller."""
    pairs: set[tuple[int, int]] = set()
    for start in range(0, len(coordinates), BATCH_ROWS):
        similarities, ids = nearest(index, coordinates[start : start + BATCH_ROWS], NEIGHBOURS + 1)
        for query, other in candidate_pairs(similarities, ids, start, threshold - CANDIDATE_MARGIN):
            if query != other and (digests[query] is None or digests[query] != digests[other]):
                pairs.add((query, other) if uris[query] > uris[other] else (other, query))
    for query, other, cosine in confirmed(sorted(pairs), shards, shards, pca.mean, threshold):
        found.add(uris[query], uris[other], NEAR, cosine, day)


def near_across(
    shards, uris, digests, other_dir: str, other_day: str, other_digests, threshold, found
) -> None:
    """Near copies in an earlier day: D's vectors in that day's PCA space, against its index."""
    pca = load_pca(join(other_dir, PCA_NAME))
    other = read_day_index(other_dir)
    pairs: list[tuple[int, int]] = []
    first = 0
    for _, matrix in vector_batches(shards):
        similarities, ids = nearest(other.index, pca.project(matrix), NEIGHBOURS)
        for query, row in candidate_pairs(similarities, ids, first, threshold - CANDIDATE_MARGIN):
            if digests[query] is None or digests[query] != other_digests[row]:
                pairs.append((query, row))
        first += len(matrix)
    other_shards = day_shards(other_dir)
    for query, row, cosine in confirmed(pairs, shards, other_shards, pca.mean, threshold):
        found.add(uris[query], other.uris[row], NEAR, cosine, other_day)


def write_duplicates(rows: list[dict], uri: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=duplicates_schema())
    with storage.open_file(uri, "wb") as handle:
        pq.write_table(table, handle)


def count_in_validation(output_dir: str, counts: dict) -> None:
    """Add the duplicate counts to the day's `validation.json` under `duplicates`."""
    from image_embeddings_airflow.validation import REPORT_NAME

    uri = join(output_dir, REPORT_NAME)
    report = storage.read_json(uri) if storage.exists(uri) else {}
    storage.write_json(uri, {**report, "duplicates": counts})


def counts_of(rows: list[dict], days: tuple[str, ...], skipped: dict, threshold: float) -> dict:
    """The figures `validation.json` and the Asset event carry."""
    return {
        "exact": sum(row["kind"] == EXACT for row in rows),
        "near": sum(row["kind"] == NEAR for row in rows),
        "images": len({row["uri"] for row in rows}),
        "threshold": threshold,
        "days_compared": list(days),
        "days_skipped": skipped,
    }


def find_duplicates(
    output_dir: str,
    day: str,
    coordinates: np.ndarray,
    index,
    fingerprint: str | None,
    threshold: float,
    lookback_days: int,
) -> DuplicatesResult:
    """Write the day's `duplicates.parquet` (within the day and the comparable earlier days).

    `coordinates` and `index` are the day's PCA coordinates and neighbours index.
    """
    root = storage.parent(output_dir)
    shards = day_shards(output_dir)
    uris, digests = uris_and_digests(shards)
    found = Found()
    exact_within(uris, digests, day, found)
    near_within(
        coordinates,
        index,
        shards,
        load_pca(join(output_dir, PCA_NAME)),
        uris,
        digests,
        threshold,
        day,
        found,
    )
    history = comparable_days(
        root, day, fingerprint, lookback_days, (PCA_NAME, NEIGHBOURS_INDEX_NAME)
    )
    for other_day in history.days:
        other_dir = join(root, other_day)
        other_uris, other_digests = uris_and_digests(day_shards(other_dir))
        exact_across(uris, digests, other_uris, other_digests, other_day, found)
        near_across(shards, uris, digests, other_dir, other_day, other_digests, threshold, found)
    rows = found.rows()
    uri = join(output_dir, DUPLICATES_NAME)
    write_duplicates(rows, uri)
    counts = counts_of(rows, history.days, history.skipped, threshold)
    log.info(
        "Duplicates of %s: %d exact, %d near (threshold %.2f) over %s and %d earlier days",
        day,
        counts["exact"],
        counts["near"],
        threshold,
        day,
        len(history.days),
    )
    return DuplicatesResult(uri=uri, counts=counts)

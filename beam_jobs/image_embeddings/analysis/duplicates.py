"""Exact (same sha256) and near (centred cosine) copies of a day's images, in it and earlier days.

Streaming passes whose memory does not grow with the lookback (docs/data-products.md):
- exact copies are DuckDB joins by digest over the id maps (`neighbours-ids.parquet`: uri, sha256)
  of day D and of each comparable earlier day, each read once;
- near copies within D: each image's `NEIGHBOURS` nearest rows in D's index are the candidates,
  and a pair's similarity is the cosine of the two full embeddings centred on D's mean;
- near copies in an earlier day E: one pass over D's embeddings projects every row onto the PCA
  axes of every E at once (spooled to local float16 files), then E's index is read once and
  searched with them; a pair's similarity is the cosine of the two images on E's axes (centred on
  E's mean: the space E's index searches);
- candidates within `CANDIDATE_MARGIN` of the threshold are confirmed in one streaming pass over
  D's float32 embeddings (one more per `CHECK_ROWS` distinct rows of within-day candidates).
Memory: D's index, then one earlier day's at a time, a batch of embeddings, the candidates, and
DuckDB under `DUCKDB_MEMORY` (it spills to a local temporary folder beyond it).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from beam_jobs.image_embeddings.analysis.day_index import (
    column_names,
    id_batches,
    ids_schema,
    projection_batches,
    read_index,
)
from beam_jobs.image_embeddings.analysis.history import comparable_days
from beam_jobs.image_embeddings.analysis.reduction import PcaAxes, load_pca, vector_batches
from beam_jobs.image_embeddings.contract import (
    DUPLICATES_NAME,
    EMBEDDINGS_PREFIX,
    NEIGHBOURS_IDS_NAME,
    NEIGHBOURS_INDEX_NAME,
    PCA_NAME,
    VALIDATION_NAME,
    join,
    shard_glob,
)
from beam_jobs.image_embeddings.search.index import neighbours_at_least, unit_vectors
from beam_jobs.image_embeddings.storage import files as storage
from beam_jobs.image_embeddings.vectors import row_cosines, unit_rows

log = logging.getLogger(__name__)

EXACT = "exact"
NEAR = "near"
NEIGHBOURS = 5
# PCA coordinates keep most, not all, of the variance: a pair's cosine there may sit a little
# above or below its full-vector cosine, so candidates this far below the threshold are checked.
CANDIDATE_MARGIN = 0.05
# Distinct rows of within-day candidates whose full vectors one confirming pass holds
# (2048-d float32: 128 MB).
CHECK_ROWS = 16_384
BATCH_ROWS = 8192
# Rows searched together: an IVF list is read once per this many queries (50-d: 13 MB).
QUERY_ROWS = 65_536
DUCKDB_MEMORY = "256MB"


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


@dataclass(frozen=True)
class DuplicatesResult:
    """Where `duplicates.parquet` is and what it counts."""

    uri: str
    counts: dict


@dataclass(frozen=True)
class Across:
    """Candidate pairs of D's rows with an earlier day's rows, and that day's unit coordinates."""

    day: str
    axes: PcaAxes
    rows: np.ndarray
    others: np.ndarray
    other_vectors: np.ndarray


def day_shards(output_dir: str) -> list[str]:
    return storage.glob(shard_glob(output_dir, EMBEDDINGS_PREFIX))


def connect(spill: str):
    """A DuckDB connection whose memory is capped (it spills to `spill`), with a `found` table."""
    import duckdb

    connection = duckdb.connect(config={"memory_limit": DUCKDB_MEMORY, "temp_directory": spill})
    connection.execute(
        "CREATE TABLE found (uri VARCHAR, duplicate_of VARCHAR, kind VARCHAR, "
        "similarity FLOAT, day_of_other VARCHAR)"
    )
    return connection


def ids_of(output_dir: str) -> Iterator:
    """A day's (uri, sha256) batches in index order: its id map, or for an id map written before
    it held digests, the embeddings shards' columns."""
    ids = join(output_dir, NEIGHBOURS_IDS_NAME)
    if "sha256" in column_names(ids):
        yield from storage.parquet_batches(ids, ["uri", "sha256"], BATCH_ROWS)
    else:
        yield from id_batches(output_dir)


def numbered(batches: Iterator):
    """The batches as one Arrow stream of (row, uri, sha256), rows numbered from 0."""
    import pyarrow as pa

    schema = pa.schema([("row", pa.int64()), *ids_schema()])

    def rows():
        first = 0
        for batch in batches:
            number = pa.array(np.arange(first, first + batch.num_rows, dtype=np.int64))
            yield pa.record_batch([number, *batch.cast(ids_schema()).columns], schema=schema)
            first += batch.num_rows

    return pa.RecordBatchReader.from_batches(schema, rows())


def load_table(connection, name: str, data) -> None:
    """Table `name` from an Arrow table or stream, read once."""
    connection.register("incoming", data)
    connection.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM incoming")
    connection.unregister("incoming")


def arrow_pairs(**columns: np.ndarray):
    import pyarrow as pa

    return pa.table({name: pa.array(values) for name, values in columns.items()})


def exact_within(connection, day: str) -> None:
    """Every image whose digest an image of the day with a smaller URI already had."""
    connection.execute(
        "INSERT INTO found SELECT uri, first, 'exact', 1.0, ? FROM ("
        " SELECT uri, min(uri) OVER (PARTITION BY sha256) AS first FROM today"
        " WHERE sha256 IS NOT NULL) WHERE uri <> first",
        [day],
    )


def exact_across(connection, day: str) -> None:
    """Rows of D whose digest a row of the earlier day `other` had (its smallest URI is the
    original)."""
    connection.execute(
        "INSERT INTO found SELECT t.uri, min(o.uri), 'exact', 1.0, ? FROM today t "
        "JOIN other o ON t.sha256 = o.sha256 GROUP BY t.uri",
        [day],
    )


def query_batches(batches: Iterator[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """The batches joined into batches of at least `rows` rows (the last may hold fewer)."""
    held: list[np.ndarray] = []
    for batch in batches:
        held.append(batch)
        if sum(map(len, held)) >= rows:
            yield np.concatenate(held)
            held = []
    if held:
        yield np.concatenate(held)


def candidates(
    index, batches: Iterator[np.ndarray], neighbours: int, floor: float
) -> tuple[np.ndarray, np.ndarray]:
    """(query row, index row) of every neighbour at or above `floor` of each batch's rows."""
    queries, found, first = [], [], 0
    for coordinates in query_batches(batches, QUERY_ROWS):
        rows, others, _ = neighbours_at_least(index, coordinates, neighbours, floor)
        queries.append(first + rows)
        found.append(others)
        first += len(coordinates)
    if not queries:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(queries).astype(np.int64), np.concatenate(found).astype(np.int64)


def within_pairs(output_dir: str, floor: float) -> np.ndarray:
    """Distinct (smaller row, larger row) candidate pairs of the day with itself."""
    index = read_index(output_dir)
    batches = (coordinates for _, coordinates in projection_batches(output_dir))
    queries, others = candidates(index, batches, NEIGHBOURS + 1, floor)
    pairs = np.sort(np.column_stack([queries, others]), axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def spool_projections(shards: list[str], axes: dict[str, PcaAxes], folder: Path) -> None:
    """One pass over D's embeddings: its unit rows on each earlier day's axes, `<day>.f16`."""
    files = {day: open(folder / f"{day}.f16", "wb") for day in axes}  # noqa: SIM115
    try:
        for _, matrix in vector_batches(shards):
            for day, day_axes in axes.items():
                files[day].write(unit_rows(day_axes.project(matrix)).astype(np.float16).tobytes())
    finally:
        for handle in files.values():
            handle.close()


def spooled(path: Path, dim: int) -> Iterator[np.ndarray]:
    """The rows a spool file holds, `BATCH_ROWS` at a time, float32."""
    with open(path, "rb") as handle:
        while chunk := handle.read(BATCH_ROWS * dim * 2):
            yield np.frombuffer(chunk, np.float16).reshape(-1, dim).astype(np.float32)


def across_pairs(connection, other_dir: str, day: str, axes: PcaAxes, spool: Path, floor) -> Across:
    """Exact copies in the earlier day, and its near candidates; reads its id map and index once."""
    load_table(connection, "other", numbered(ids_of(other_dir)))
    exact_across(connection, day)
    index = read_index(other_dir)
    rows, others = candidates(index, spooled(spool, len(axes.components)), NEIGHBOURS, floor)
    order = np.argsort(rows, kind="stable")
    rows, others = rows[order], others[order]
    vectors = unit_vectors(index, others) if len(others) else np.zeros((0, index.d), np.float32)
    load_table(connection, "pairs", arrow_pairs(row=rows, other=others))
    connection.execute(
        "INSERT INTO across SELECT ?, p.row, p.other, o.uri, o.sha256 FROM pairs p "
        "JOIN other o ON o.row = p.other",
        [day],
    )
    connection.execute("DROP TABLE other")
    return Across(day, axes, rows, others, vectors)


def gather(shards: list[str], wants: list[tuple[np.ndarray, Callable]]) -> list[np.ndarray | None]:
    """One pass over the day's embeddings: for each (sorted rows, transform), the transformed
    vectors of those rows (None for no rows)."""
    outputs: list[np.ndarray | None] = [None] * len(wants)
    filled = [0] * len(wants)
    first = 0
    for _, matrix in vector_batches(shards):
        for number, (rows, transform) in enumerate(wants):
            end = int(np.searchsorted(rows, first + len(matrix)))
            if end > filled[number]:
                part = transform(matrix[rows[filled[number] : end] - first])
                if outputs[number] is None:
                    outputs[number] = np.empty((len(rows), part.shape[1]), part.dtype)
                outputs[number][filled[number] : end] = part
                filled[number] = end
        first += len(matrix)
    return outputs


def as_is(matrix: np.ndarray) -> np.ndarray:
    return matrix


def pair_chunks(pairs: np.ndarray) -> Iterator[np.ndarray]:
    """The within-day pairs in chunks of at most `CHECK_ROWS` distinct rows (one, maybe empty)."""
    step = CHECK_ROWS // 2
    yield pairs[:step]
    for start in range(step, len(pairs), step):
        yield pairs[start : start + step]


def record_within(connection, chunk: np.ndarray, rows: np.ndarray, vectors, mean) -> None:
    """Table `within` gains each pair's cosine of full vectors centred on the day's mean."""
    if not len(chunk):
        return
    centred = vectors - mean
    cosines = row_cosines(
        centred[np.searchsorted(rows, chunk[:, 0])], centred[np.searchsorted(rows, chunk[:, 1])]
    )
    load_table(
        connection, "chunk", arrow_pairs(row=chunk[:, 0], other=chunk[:, 1], similarity=cosines)
    )
    connection.execute("INSERT INTO within SELECT * FROM chunk")


def record_across(connection, found: Across, projected: np.ndarray | None) -> None:
    """Table `confirmed_across` gains each pair's cosine on the earlier day's axes."""
    if not len(found.rows):
        return
    cosines = row_cosines(projected, found.other_vectors)
    load_table(
        connection, "chunk", arrow_pairs(row=found.rows, other=found.others, similarity=cosines)
    )
    connection.execute(
        "INSERT INTO confirmed_across SELECT ?, row, other, similarity FROM chunk", [found.day]
    )


def confirm(connection, shards, pairs: np.ndarray, mean: np.ndarray, across: list[Across]) -> None:
    """The cosine of every candidate pair, from D's float32 embeddings: the first pass confirms
    the earlier days' candidates too."""
    for number, chunk in enumerate(pair_chunks(pairs)):
        rows = np.unique(chunk)
        earlier = [(found.rows, found.axes.project) for found in across] if number == 0 else []
        wants = [(rows, as_is), *earlier]
        if not any(len(wanted) for wanted, _ in wants):
            return
        vectors = gather(shards, wants)
        record_within(connection, chunk, rows, vectors[0], mean)
        for found, projected in zip(across, vectors[1:], strict=False):
            record_across(connection, found, projected)


def near_rows(connection, threshold: float, day: str) -> None:
    """`found` gains the confirmed near pairs whose digests differ (or are unknown): within the
    day the larger URI is the copy of the smaller."""
    connection.execute(
        "INSERT INTO found SELECT greatest(a.uri, b.uri), least(a.uri, b.uri), 'near', "
        "w.similarity, ? FROM within w JOIN today a ON a.row = w.row "
        "JOIN today b ON b.row = w.other "
        "WHERE w.similarity >= ? AND NOT coalesce(a.sha256 = b.sha256, false)",
        [day, threshold],
    )
    connection.execute(
        "INSERT INTO found SELECT t.uri, c.other_uri, 'near', f.similarity, f.day "
        "FROM confirmed_across f JOIN across c USING (day, row, other) "
        "JOIN today t ON t.row = f.row "
        "WHERE f.similarity >= ? AND NOT coalesce(t.sha256 = c.other_sha256, false)",
        [threshold],
    )


BEST = """
SELECT uri, duplicate_of, kind, similarity, day_of_other FROM (
  SELECT *, row_number() OVER (
    PARTITION BY uri, day_of_other
    ORDER BY kind = 'exact' DESC, similarity DESC, duplicate_of) AS rank
  FROM found)
WHERE rank = 1 ORDER BY uri, day_of_other
"""


def write_duplicates(connection, uri: str) -> None:
    """The best copy of each (image, day of the other): an exact copy beats any near one, and
    among near ones the most similar wins; streamed into `uri`."""
    import pyarrow.parquet as pq

    connection.execute(f"CREATE TABLE best AS {BEST}")
    reader = connection.sql("SELECT * FROM best").to_arrow_reader(BATCH_ROWS)
    with (
        storage.open_file(uri, "wb") as handle,
        pq.ParquetWriter(handle, duplicates_schema()) as writer,
    ):
        for batch in reader:
            writer.write_batch(batch.cast(duplicates_schema()))


def count_in_validation(output_dir: str, counts: dict) -> None:
    """Add the duplicate counts to the day's `validation.json` under `duplicates`."""
    uri = join(output_dir, VALIDATION_NAME)
    report = storage.read_json(uri) if storage.exists(uri) else {}
    storage.write_json(uri, {**report, "duplicates": counts})


def counts_of(connection, days: tuple[str, ...], skipped: dict, threshold: float) -> dict:
    """The figures `validation.json` and the Asset event carry."""
    exact, near, images = connection.execute(
        "SELECT count(*) FILTER (kind = 'exact'), count(*) FILTER (kind = 'near'), "
        "count(DISTINCT uri) FROM best"
    ).fetchone()
    return {
        "exact": exact,
        "near": near,
        "images": images,
        "threshold": threshold,
        "days_compared": list(days),
        "days_skipped": skipped,
    }


def find_duplicates(
    output_dir: str, day: str, fingerprint: str | None, threshold: float, lookback_days: int
) -> DuplicatesResult:
    """Write the day's `duplicates.parquet` (within the day and the comparable earlier days).

    Reads the day's id map, index and projection, each earlier day's id map, `pca.npz` and index
    once, and the day's embeddings once for the lookback and once to confirm candidates.
    """
    root = storage.parent(output_dir)
    shards = day_shards(output_dir)
    floor = threshold - CANDIDATE_MARGIN
    history = comparable_days(
        root,
        day,
        fingerprint,
        lookback_days,
        (PCA_NAME, NEIGHBOURS_INDEX_NAME, NEIGHBOURS_IDS_NAME),
    )
    with tempfile.TemporaryDirectory(prefix="duplicates-") as scratch:
        connection = connect(scratch)
        connection.execute(
            "CREATE TABLE within (row BIGINT, other BIGINT, similarity FLOAT);"
            "CREATE TABLE across (day VARCHAR, row BIGINT, other BIGINT, other_uri VARCHAR, "
            "other_sha256 VARCHAR);"
            "CREATE TABLE confirmed_across "
            "(day VARCHAR, row BIGINT, other BIGINT, similarity FLOAT)"
        )
        load_table(connection, "today", numbered(ids_of(output_dir)))
        exact_within(connection, day)
        pairs = within_pairs(output_dir, floor)
        axes = {other: load_pca(join(root, other, PCA_NAME)) for other in history.days}
        if axes:
            spool_projections(shards, axes, Path(scratch))
        across = [
            across_pairs(
                connection,
                join(root, other),
                other,
                axes[other],
                Path(scratch) / f"{other}.f16",
                floor,
            )
            for other in history.days
        ]
        confirm(connection, shards, pairs, load_pca(join(output_dir, PCA_NAME)).mean, across)
        near_rows(connection, threshold, day)
        uri = join(output_dir, DUPLICATES_NAME)
        write_duplicates(connection, uri)
        counts = counts_of(connection, history.days, history.skipped, threshold)
        connection.close()
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

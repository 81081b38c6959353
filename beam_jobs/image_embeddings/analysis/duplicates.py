"""Exact (same sha256) and near (centred cosine) copies of a day's images, in it and earlier days.

Steps the analysis job spreads over workers (docs/data-products.md), each a streaming pass whose
memory does not grow with the lookback, passing what they find through a scratch folder:
- exact copies are DuckDB joins by digest over the id maps (`neighbours-ids.parquet`: uri, sha256)
  of day D and of each comparable earlier day, each read once;
- near copies within D: each image's `NEIGHBOURS` nearest rows in D's index are the candidates,
  and a pair's similarity is the cosine of the two full embeddings centred on D's mean;
- near copies in an earlier day E: one pass over D's embeddings projects every row onto the PCA
  axes of every E at once (spooled to float16 files in the scratch folder), then E's index is
  read once and searched with them, each E on its own; a pair's similarity is the cosine of the
  two images on E's axes (centred on E's mean: the space E's index searches);
- once every search has finished, candidates within `CANDIDATE_MARGIN` of the threshold are
  confirmed in one streaming pass over D's float32 embeddings (one more per `CHECK_ROWS` distinct
  rows of within-day candidates).
Memory: D's index, then one earlier day's at a time, a batch of embeddings, the candidates, and
DuckDB under `DUCKDB_MEMORY` (it spills to a local temporary folder beyond it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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


def spool_uri(scratch: str, other: str) -> str:
    """Where day D's unit rows on the axes of the earlier day `other` are spooled."""
    return join(scratch, f"{other}.f16")


def spool_projections(output_dir: str, axes: dict[str, PcaAxes], scratch: str) -> None:
    """One pass over D's embeddings: its unit rows on each earlier day's axes, float16, into
    `scratch` (a folder every worker of the job can read)."""
    if not axes:
        return
    with contextlib.ExitStack() as stack:
        files = {
            day: stack.enter_context(storage.open_file(spool_uri(scratch, day), "wb"))
            for day in axes
        }
        for _, matrix in vector_batches(day_shards(output_dir)):
            for day, day_axes in axes.items():
                files[day].write(unit_rows(day_axes.project(matrix)).astype(np.float16).tobytes())


def spooled(uri: str, dim: int) -> Iterator[np.ndarray]:
    """The rows a spool file holds, `BATCH_ROWS` at a time, float32."""
    with storage.open_file(uri, "rb") as handle:
        while chunk := handle.read(BATCH_ROWS * dim * 2):
            yield np.frombuffer(chunk, np.float16).reshape(-1, dim).astype(np.float32)


def exact_uri(scratch: str, other: str) -> str:
    return join(scratch, f"{other}-exact.parquet")


def near_uri(scratch: str, other: str) -> str:
    return join(scratch, f"{other}-near.parquet")


def within_uri(scratch: str) -> str:
    return join(scratch, "within.npy")


def write_arrow(table, uri: str) -> None:
    import pyarrow.parquet as pq

    with storage.open_file(uri, "wb") as handle:
        pq.write_table(table, handle)


def read_arrow(uri: str):
    import pyarrow.parquet as pq

    with storage.open_file(uri, "rb") as handle:
        return pq.read_table(handle)


def search_earlier(output_dir: str, other_dir: str, other: str, scratch: str, floor: float):
    """Exact copies of D's images in the earlier day `other`, and its near candidates with their
    unit coordinates on that day's axes, into `scratch`. Reads that day's id map and index once,
    D's id map and spool once: one earlier day per call, so a job searches days in parallel."""
    import pyarrow as pa

    with tempfile.TemporaryDirectory(prefix="duplicates-") as spill:
        connection = connect(spill)
        load_table(connection, "today", numbered(ids_of(output_dir)))
        load_table(connection, "other", numbered(ids_of(other_dir)))
        exact_across(connection, other)
        exact = connection.sql("SELECT * FROM found").to_arrow_table()
        index = read_index(other_dir)
        queries = spooled(spool_uri(scratch, other), index.d)
        rows, others = candidates(index, queries, NEIGHBOURS, floor)
        load_table(connection, "pairs", arrow_pairs(row=rows, other=others))
        near = connection.sql(
            "SELECT p.row, p.other, o.uri AS other_uri, o.sha256 AS other_sha256 FROM pairs p "
            "JOIN other o ON o.row = p.other ORDER BY p.row, p.other"
        ).to_arrow_table()
        connection.close()
    write_arrow(exact, exact_uri(scratch, other))
    others = near.column("other").to_numpy()
    vectors = unit_vectors(index, others) if len(others) else np.zeros((0, index.d), np.float32)
    flat = pa.array(vectors.reshape(-1), pa.float32())
    near = near.append_column("other_vector", pa.FixedSizeListArray.from_arrays(flat, index.d))
    write_arrow(near, near_uri(scratch, other))


def search_within(output_dir: str, scratch: str, floor: float) -> None:
    """The day's candidate pairs with itself, into `scratch`."""
    buffer = io.BytesIO()
    np.save(buffer, within_pairs(output_dir, floor), allow_pickle=False)
    storage.write_bytes(within_uri(scratch), buffer.getvalue())


def found_across(connection, output_root: str, other: str, scratch: str) -> Across:
    """`found` gains the exact copies in the earlier day `other`, `across` its near candidates."""
    load_table(connection, "incoming", read_arrow(exact_uri(scratch, other)))
    connection.execute("INSERT INTO found SELECT * FROM incoming")
    near = read_arrow(near_uri(scratch, other))
    vectors = near.column("other_vector").combine_chunks()
    width = vectors.type.list_size
    load_table(connection, "incoming", near.drop_columns(["other_vector"]))
    connection.execute(
        "INSERT INTO across SELECT ?, row, other, other_uri, other_sha256 FROM incoming", [other]
    )
    return Across(
        day=other,
        axes=load_pca(join(output_root, other, PCA_NAME)),
        rows=near.column("row").to_numpy(),
        others=near.column("other").to_numpy(),
        other_vectors=vectors.flatten().to_numpy().reshape(-1, width).astype(np.float32),
    )


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


def comparable_history(output_dir: str, day: str, fingerprint: str | None, lookback_days: int):
    """The earlier days whose copies of D's images are searched, and why others are not."""
    return comparable_days(
        storage.parent(output_dir),
        day,
        fingerprint,
        lookback_days,
        (PCA_NAME, NEIGHBOURS_INDEX_NAME, NEIGHBOURS_IDS_NAME),
    )


def spool_for_history(output_dir: str, days: tuple[str, ...], scratch: str) -> None:
    """D's rows on the axes of every earlier day in `days`, spooled for `search_earlier`."""
    root = storage.parent(output_dir)
    axes = {other: load_pca(join(root, other, PCA_NAME)) for other in days}
    spool_projections(output_dir, axes, scratch)


def write_found(
    output_dir: str, day: str, history, threshold: float, scratch: str
) -> DuplicatesResult:
    """Confirm the candidates that the searches left in `scratch` and write the day's
    `duplicates.parquet`. Reads D's embeddings once to confirm, once more per `CHECK_ROWS`
    distinct rows of within-day candidates."""
    root = storage.parent(output_dir)
    with tempfile.TemporaryDirectory(prefix="duplicates-") as spill:
        connection = connect(spill)
        connection.execute(
            "CREATE TABLE within (row BIGINT, other BIGINT, similarity FLOAT);"
            "CREATE TABLE across (day VARCHAR, row BIGINT, other BIGINT, other_uri VARCHAR, "
            "other_sha256 VARCHAR);"
            "CREATE TABLE confirmed_across "
            "(day VARCHAR, row BIGINT, other BIGINT, similarity FLOAT)"
        )
        load_table(connection, "today", numbered(ids_of(output_dir)))
        exact_within(connection, day)
        pairs = np.load(io.BytesIO(storage.read_bytes(within_uri(scratch))), allow_pickle=False)
        across = [found_across(connection, root, other, scratch) for other in history.days]
        mean = load_pca(join(output_dir, PCA_NAME)).mean
        confirm(connection, day_shards(output_dir), pairs, mean, across)
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


def find_duplicates(
    output_dir: str, day: str, fingerprint: str | None, threshold: float, lookback_days: int
) -> DuplicatesResult:
    """Write the day's `duplicates.parquet` (within the day and the comparable earlier days) in
    this process: the analysis job's steps, one after the other."""
    history = comparable_history(output_dir, day, fingerprint, lookback_days)
    floor = threshold - CANDIDATE_MARGIN
    root = storage.parent(output_dir)
    with tempfile.TemporaryDirectory(prefix="duplicates-scratch-") as scratch:
        spool_for_history(output_dir, history.days, scratch)
        for other in history.days:
            search_earlier(output_dir, join(root, other), other, scratch, floor)
        search_within(output_dir, scratch, floor)
        return write_found(output_dir, day, history, threshold, scratch)

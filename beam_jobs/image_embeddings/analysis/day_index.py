"""A day's neighbours index and its id map, built from the PCA projection, stored and read back."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from beam_jobs.image_embeddings.contract import (
    EMBEDDINGS_PREFIX,
    NEIGHBOURS_IDS_NAME,
    NEIGHBOURS_INDEX_NAME,
    PROJECTION_NAME,
    join,
    shard_glob,
)
from beam_jobs.image_embeddings.search.index import (
    add_rows,
    empty_index,
    read_index_from,
    training_picks,
    write_index,
)
from beam_jobs.image_embeddings.storage import files as storage

log = logging.getLogger(__name__)

BATCH_ROWS = 8192


@dataclass(frozen=True)
class DayIndex:
    """A loaded index: FAISS index, and the URI of each of its rows."""

    index: Any
    uris: list[str]


def ids_schema():
    """`neighbours-ids.parquet`: row `i` is the URI and sha256 (null if unknown) of the index's
    row `i`; the lookback of later days reads it instead of the 2048-d shards."""
    import pyarrow as pa

    return pa.schema([("uri", pa.string()), ("sha256", pa.string())])


def column_names(uri: str) -> list[str]:
    """The columns of a Parquet file, from its footer."""
    import pyarrow.parquet as pq

    with storage.open_file(uri, "rb") as handle:
        return pq.read_schema(handle).names


def projection_batches(output_dir: str) -> Iterator[tuple[Any, np.ndarray]]:
    """(URIs, float32 coordinates) of `projection.parquet`, `BATCH_ROWS` rows at a time."""
    uri = join(output_dir, PROJECTION_NAME)
    names = column_names(uri)
    for batch in storage.parquet_batches(uri, names, BATCH_ROWS):
        coordinates = [batch.column(name).to_numpy() for name in names if name != "uri"]
        yield batch.column("uri"), np.column_stack(coordinates).astype(np.float32, copy=False)


def id_batches(output_dir: str) -> Iterator[Any]:
    """(uri, sha256) record batches of the day's embeddings shards, in index order."""
    import pyarrow as pa

    for shard in storage.glob(shard_glob(output_dir, EMBEDDINGS_PREFIX)):
        with_digests = "sha256" in column_names(shard)
        columns = ["uri", "sha256"] if with_digests else ["uri"]
        for batch in storage.parquet_batches(shard, columns, BATCH_ROWS):
            # A shard written before digests were stored: its rows are compared by vector only.
            digests = batch.column("sha256") if with_digests else pa.nulls(batch.num_rows)
            yield pa.record_batch(
                [batch.column("uri"), digests.cast(pa.string())], schema=ids_schema()
            )


def write_day_index(output_dir: str) -> str:
    """Index the day's PCA coordinates and write the index and its id map; return the index URI.

    Two streaming passes over `projection.parquet` (the IVF's training sample, then every row)
    and one over the shards' `uri` and `sha256` columns: only the index grows with the day.
    """
    import pyarrow.parquet as pq

    projection = join(output_dir, PROJECTION_NAME)
    rows = storage.parquet_rows(projection)
    picks = training_picks(rows)
    training, first, dim = [], 0, 0
    for _, coordinates in projection_batches(output_dir):
        chosen = picks[(picks >= first) & (picks < first + len(coordinates))] - first
        training.append(coordinates[chosen])
        first, dim = first + len(coordinates), coordinates.shape[1]
    index = empty_index(dim, rows, np.concatenate(training) if training else None)
    del training
    for _, coordinates in projection_batches(output_dir):
        add_rows(index, coordinates)
    index_uri = join(output_dir, NEIGHBOURS_INDEX_NAME)
    with storage.open_file(index_uri, "wb") as handle:
        write_index(index, handle)
    written = 0
    with (
        storage.open_file(join(output_dir, NEIGHBOURS_IDS_NAME), "wb") as handle,
        pq.ParquetWriter(handle, ids_schema()) as writer,
    ):
        for batch in id_batches(output_dir):
            writer.write_batch(batch)
            written += batch.num_rows
    if written != index.ntotal:
        raise ValueError(
            f"{output_dir}: {PROJECTION_NAME} holds {index.ntotal} rows but the embeddings "
            f"{written}; run the day's analysis again"
        )
    log.info("Indexed %d images of %s for similarity search", written, output_dir)
    return index_uri


def read_index(output_dir: str) -> Any:
    """A day's FAISS index."""
    with storage.open_file(join(output_dir, NEIGHBOURS_INDEX_NAME), "rb") as handle:
        return read_index_from(handle)


def read_day_index(output_dir: str) -> DayIndex:
    """The index and id map of a day; ValueError when they disagree on the row count."""
    import pyarrow.parquet as pq

    index = read_index(output_dir)
    with storage.open_file(join(output_dir, NEIGHBOURS_IDS_NAME), "rb") as handle:
        uris = pq.read_table(handle, columns=["uri"]).column("uri").to_pylist()
    if index.ntotal != len(uris):
        raise ValueError(
            f"{output_dir}: {NEIGHBOURS_INDEX_NAME} holds {index.ntotal} rows but "
            f"{NEIGHBOURS_IDS_NAME} {len(uris)}; run that day's analysis again"
        )
    return DayIndex(index=index, uris=uris)

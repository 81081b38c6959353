"""A day's neighbours index and its id map, built from the PCA projection, stored and read back."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from beam_jobs.image_embeddings.contract import NEIGHBOURS_IDS_NAME, NEIGHBOURS_INDEX_NAME, join
from beam_jobs.image_embeddings.neighbours import build_index, index_bytes, index_from_bytes
from image_embeddings_airflow import storage
from image_embeddings_airflow.reduction import PROJECTION_NAME, read_projection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DayIndex:
    """A loaded index: FAISS index, and the URI of each of its rows."""

    index: Any
    uris: list[str]


def ids_schema():
    """`neighbours-ids.parquet`: row `i` is the URI of the index's row `i`."""
    import pyarrow as pa

    return pa.schema([("uri", pa.string())])


def _projection_uris(output_dir: str) -> list[str]:
    import pyarrow.parquet as pq

    with storage.open_file(join(output_dir, PROJECTION_NAME), "rb") as handle:
        return pq.read_table(handle, columns=["uri"]).column("uri").to_pylist()


def write_day_index(output_dir: str) -> tuple[str, np.ndarray, Any]:
    """Index the day's PCA coordinates; write the index and its id map.

    Returns the index's URI, the coordinates and the index: the duplicate search uses both next.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    coordinates = read_projection(join(output_dir, PROJECTION_NAME))
    uris = _projection_uris(output_dir)
    index_uri = join(output_dir, NEIGHBOURS_INDEX_NAME)
    index = build_index(coordinates)
    storage.write_bytes(index_uri, index_bytes(index))
    table = pa.table([pa.array(uris, pa.string())], schema=ids_schema())
    with storage.open_file(join(output_dir, NEIGHBOURS_IDS_NAME), "wb") as handle:
        pq.write_table(table, handle)
    log.info("Indexed %d images of %s for similarity search", len(uris), output_dir)
    return index_uri, coordinates, index


def read_day_index(output_dir: str) -> DayIndex:
    """The index and id map of a day; ValueError when they disagree on the row count."""
    import pyarrow.parquet as pq

    index = index_from_bytes(storage.read_bytes(join(output_dir, NEIGHBOURS_INDEX_NAME)))
    with storage.open_file(join(output_dir, NEIGHBOURS_IDS_NAME), "rb") as handle:
        uris = pq.read_table(handle).column("uri").to_pylist()
    if index.ntotal != len(uris):
        raise ValueError(
            f"{output_dir}: {NEIGHBOURS_INDEX_NAME} holds {index.ntotal} rows but "
            f"{NEIGHBOURS_IDS_NAME} {len(uris)}; run reduce_dimensions of that day again"
        )
    return DayIndex(index=index, uris=uris)

"""A day's approximate-nearest-neighbour index: FAISS over unit PCA coordinates, cosine by dot.

The index holds each image's coordinates in its day's PCA space (`pca.npz`, centred on the day's
mean), scaled to unit length, so an inner product is a centred cosine in that space. Row `i` of the
index is row `i` of `projection.parquet` and of `neighbours-ids.parquet`.

Why FAISS, IVF-Flat: see `benchmarks/ann_libraries.py` and docs/data-products.md. On this 2-core
AVX2 machine, 100k x 50 unit vectors with 1% planted near-copies, 5 neighbours of every vector:
FAISS IVF-Flat built in 13-16 s and searched in 10-19 s; FAISS HNSW (M 32) 73 s + 45 s; USearch
HNSW (connectivity 16) 88 s + 95 s; each found every planted copy; peaks 120-170 MB. A day's index
is built once and searched with every row once (duplicates): build plus full search decides.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from beam_jobs.image_embeddings.vectors import unit_rows

# Below this many rows an exact (flat) index costs less than training the IVF's coarse quantizer.
FLAT_MAX_ROWS = 20_000
# IVF lists: 2 sqrt(n); trained on up to 40 points a list (FAISS's own advice: 39 or more).
LISTS_PER_SQRT_ROW = 2
TRAINING_POINTS_PER_LIST = 40
# Lists scanned per query: every planted near-copy was found with 8 of 2 sqrt(n).
PROBED_LISTS = 8
# Lists scanned per similarity-search query: ordinary top-10 neighbours, not near-copies, need
# more (benchmarks/search_recall.py).
SEARCH_PROBED_LISTS = 64
SEED = 0


def list_count(rows: int) -> int:
    """IVF lists for `rows` vectors."""
    return max(1, int(LISTS_PER_SQRT_ROW * math.sqrt(rows)))


def training_rows(rows: int) -> int:
    """How many of `rows` vectors train the index's coarse quantizer (0: a flat index)."""
    return 0 if rows <= FLAT_MAX_ROWS else min(rows, list_count(rows) * TRAINING_POINTS_PER_LIST)


def empty_index(dim: int, rows: int, training: np.ndarray | None = None) -> Any:
    """An inner-product index for `rows` vectors of `dim`, trained on `training` when it is IVF.

    Rows are added afterwards with `add_rows`, a batch at a time: the index is the only thing
    whose memory grows with the day (4 x dim bytes a row).
    """
    import faiss

    if rows <= FLAT_MAX_ROWS:
        return faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(
        faiss.IndexFlatIP(dim), dim, list_count(rows), faiss.METRIC_INNER_PRODUCT
    )
    index.train(unit_rows(training))
    index.nprobe = PROBED_LISTS
    return index


def add_rows(index: Any, coordinates: np.ndarray) -> None:
    """Append the unit rows of `coordinates` to the index."""
    index.add(unit_rows(coordinates))


def training_picks(rows: int) -> np.ndarray:
    """The sorted row numbers that train the index of `rows` vectors (seeded)."""
    size = training_rows(rows)
    return np.sort(np.random.default_rng(SEED).choice(rows, size=size, replace=False))


def build_index(coordinates: np.ndarray) -> Any:
    """An inner-product index of the unit rows of `coordinates` (exact below FLAT_MAX_ROWS)."""
    rows, dim = coordinates.shape
    index = empty_index(dim, rows, coordinates[training_picks(rows)])
    add_rows(index, coordinates)
    return index


def unit_vectors(index: Any, ids: np.ndarray) -> np.ndarray:
    """The stored unit rows `ids` of an index (an IVF index gains its direct map first)."""
    import faiss

    if isinstance(index, faiss.IndexIVF) and not index.direct_map.type:
        index.make_direct_map()
    return index.reconstruct_batch(np.asarray(ids, dtype=np.int64))


def write_index(index: Any, handle: Any) -> None:
    """Serialise the index into a writable binary file, a chunk at a time (no serialised copy of
    the whole index in memory)."""
    import faiss

    faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))


def read_index_from(handle: Any) -> Any:
    """An index read back from `write_index`'s file, a chunk at a time."""
    import faiss

    index = faiss.read_index(faiss.PyCallbackIOReader(handle.read))
    if isinstance(index, faiss.IndexIVF):
        index.nprobe = PROBED_LISTS
    return index


def nearest(
    index: Any, coordinates: np.ndarray, k: int, probes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, row ids) of the `k` nearest rows to each unit row of `coordinates`.

    An IVF index scans `probes` lists (default: its own `nprobe`). Missing neighbours (an index
    smaller than `k`) have id -1.
    """
    import faiss

    params = faiss.SearchParametersIVF(nprobe=probes) if probes else None
    if not isinstance(index, faiss.IndexIVF):
        params = None
    return index.search(unit_rows(coordinates), min(k, index.ntotal), params=params)

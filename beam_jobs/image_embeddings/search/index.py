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


def neighbours_at_least(
    index: Any, coordinates: np.ndarray, k: int, floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row, index row, similarity) of the `k` nearest index rows at or above `floor` to
    each unit row of `coordinates`: what `nearest` finds, above the floor.

    An IVF index is searched list by list rather than query by query: the batch's queries that
    probe a list meet its rows in one matrix product, so each list is read once per batch: 2.4x
    less CPU than FAISS's own search, for the same pairs (64k queries on a synthetic 1M-row day,
    `benchmarks/scale.py`'s, on a 2-core AVX-512 EPYC).
    """
    import faiss
    from threadpoolctl import threadpool_limits

    if not isinstance(index, faiss.IndexIVF):
        similarities, ids = nearest(index, coordinates, k)
        rows, columns = np.nonzero((similarities >= floor) & (ids >= 0))
        return rows, ids[rows, columns], similarities[rows, columns]
    queries = unit_rows(coordinates)
    _, probed = index.quantizer.search(queries, index.nprobe)
    order = np.argsort(probed.ravel(), kind="stable")
    bounds = np.searchsorted(probed.ravel()[order], np.arange(index.nlist + 1))
    asking = order // index.nprobe
    # Each list's product is small: BLAS threads would cost more in start-up and waiting
    # (7x the CPU on a busy 2-core host) than they save.
    with threadpool_limits(1, user_api="blas"):
        found = [
            _list_hits(index, number, queries, asking[start:end], k, floor)
            for number, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
            if end > start
        ]
    rows, others, similarities = (
        (np.concatenate(part) for part in zip(*found, strict=True))
        if found
        else (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    )
    return _best_per_query(rows, others, similarities, k)


def _list_hits(
    index: Any, number: int, queries: np.ndarray, askers: np.ndarray, k: int, floor: float
):
    """The pairs of `askers` with rows of IVF list `number` at or above `floor`, at most `k` per
    query (memory stays bounded however alike the rows are)."""
    vectors, ids = _list_rows(index, number)
    scores = queries[askers] @ vectors.T
    hits = scores >= floor
    crowded = np.flatnonzero(np.count_nonzero(hits, axis=1) > k)
    if len(crowded):
        part = scores[crowded]
        hits[crowded] &= part >= np.partition(part, -k, axis=1)[:, -k : -k + 1]
    rows, columns = np.nonzero(hits)
    return askers[rows], ids[columns], scores[rows, columns]


def _list_rows(index: Any, number: int) -> tuple[np.ndarray, np.ndarray]:
    """The unit rows an IVF-Flat list holds and their ids, read in place."""
    import faiss

    size = index.invlists.list_size(number)
    if not size:
        return np.zeros((0, index.d), np.float32), np.zeros(0, np.int64)
    codes = faiss.rev_swig_ptr(index.invlists.get_codes(number), size * index.code_size)
    ids = faiss.rev_swig_ptr(index.invlists.get_ids(number), size)
    return np.frombuffer(codes, np.float32).reshape(size, index.d), np.asarray(ids)


def _best_per_query(rows: np.ndarray, others: np.ndarray, similarities: np.ndarray, k: int):
    """The `k` most similar pairs of each query row, by row then best first."""
    order = np.lexsort((-similarities, rows))
    rows, others, similarities = rows[order], others[order], similarities[order]
    keep = np.arange(len(rows)) - np.searchsorted(rows, rows) < k
    return rows[keep], others[keep], similarities[keep]


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

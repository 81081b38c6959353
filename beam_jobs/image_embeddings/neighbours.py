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


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32; an all-zero row stays zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def list_count(rows: int) -> int:
    """IVF lists for `rows` vectors."""
    return max(1, int(LISTS_PER_SQRT_ROW * math.sqrt(rows)))


def build_index(coordinates: np.ndarray) -> Any:
    """An inner-product index of the unit rows of `coordinates` (exact below FLAT_MAX_ROWS)."""
    import faiss

    vectors = unit_rows(coordinates)
    rows, dim = vectors.shape
    if rows <= FLAT_MAX_ROWS:
        index = faiss.IndexFlatIP(dim)
    else:
        lists = list_count(rows)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        training = min(rows, lists * TRAINING_POINTS_PER_LIST)
        picks = np.sort(np.random.default_rng(SEED).choice(rows, size=training, replace=False))
        index.train(vectors[picks])
        index.nprobe = PROBED_LISTS
    index.add(vectors)
    return index


def index_bytes(index: Any) -> bytes:
    """The index serialised, for any storage."""
    import faiss

    return faiss.serialize_index(index).tobytes()


def index_from_bytes(data: bytes) -> Any:
    """An index read back from `index_bytes`."""
    import faiss

    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
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

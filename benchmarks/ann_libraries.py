"""FAISS (IVF-Flat, HNSW) against USearch (HNSW) on the duplicate search's workload.

`python -m benchmarks.ann_libraries {faiss-ivf,faiss-hnsw,usearch} [--rows N] [--dim D]` builds an
inner-product index of N unit vectors (1% of them planted noisy copies of others), then finds the
5 nearest of every vector, as the duplicate search does, and prints a BENCH_RESULT line: build and
search seconds, the share of planted copies found, peak memory. Run one library per process.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Sequence

import numpy as np

from beam_jobs.image_embeddings.search.index import PROBED_LISTS, build_index, list_count
from beam_jobs.image_embeddings.vectors import unit_rows
from benchmarks.measure import print_result

NEIGHBOURS = 5
THREADS = 2


def planted(rows: int, dim: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Unit vectors whose last 1% are noisy copies of the first 1%; and that count."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    copies = rows // 100
    vectors[-copies:] = vectors[:copies] + 0.1 * rng.standard_normal((copies, dim), np.float32)
    return unit_rows(vectors), copies


def faiss_hnsw(vectors: np.ndarray):
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 40
    index.add(vectors)
    index.hnsw.efSearch = 32
    return lambda queries: index.search(queries, NEIGHBOURS)[1]


def faiss_ivf(vectors: np.ndarray):
    # The project's own index (exact below FLAT_MAX_ROWS rows).
    index = build_index(vectors)
    return lambda queries: index.search(queries, NEIGHBOURS)[1]


def usearch_hnsw(vectors: np.ndarray):
    from usearch.index import Index

    index = Index(ndim=vectors.shape[1], metric="ip", dtype="f32", connectivity=16)
    index.expansion_add, index.expansion_search = 40, 32
    index.add(np.arange(len(vectors)), vectors, threads=THREADS)
    return lambda queries: index.search(queries, NEIGHBOURS, threads=THREADS).keys


LIBRARIES = {"faiss-ivf": faiss_ivf, "faiss-hnsw": faiss_hnsw, "usearch": usearch_hnsw}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ann_libraries", description=__doc__)
    parser.add_argument("library", choices=sorted(LIBRARIES))
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=50, help="the PCA components a day keeps")
    args = parser.parse_args(argv)
    vectors, copies = planted(args.rows, args.dim)
    started = time.perf_counter()
    search = LIBRARIES[args.library](vectors)
    built = time.perf_counter()
    ids = search(vectors)
    searched = time.perf_counter()
    found = np.mean([(args.rows - copies + i) in ids[i] for i in range(copies)])
    print_result(
        {
            "library": args.library,
            "rows": args.rows,
            "dim": args.dim,
            "ivf_lists": list_count(args.rows),
            "probed_lists": PROBED_LISTS,
            "build_s": built - started,
            "search_s": searched - built,
            "copies_found": float(found),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


if __name__ == "__main__":
    main()

"""Recall@10 of a day's neighbours index against exact search, on a synthetic day of clustered rows.

`python -m benchmarks.search_recall [--rows N] [--queries Q]` builds the project's own index
(`neighbours.build_index`) over N clustered rows of PCA coordinates (what the index holds: 50
components, variance falling along the axes as a PCA's does), then, for each number of probed IVF
lists, prints recall@10 against an exact (flat) search, query latency, and the build time and peak
memory. 1M rows of 50 float32 components is 200 MB; the whole run stays under 1.5 GB.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Sequence

import numpy as np

from beam_jobs.image_embeddings.search.index import SEARCH_PROBED_LISTS, build_index, unit_rows
from benchmarks.measure import print_result

COMPONENTS = 50
CLUSTERS = 1000
# Spread of a cluster around its centre, against the spread of the centres: clusters overlap.
CLUSTER_SPREAD = 1.0
K = 10
PROBES = (8, 16, 32, 64, 128)
SINGLE_QUERIES = 200


def clustered(rows: int, seed: int) -> np.ndarray:
    """`rows` points of a Gaussian mixture whose variance falls along the axes, float32."""
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(np.arange(1, COMPONENTS + 1))).astype(np.float32)
    centres = np.random.default_rng(0).standard_normal((CLUSTERS, COMPONENTS), np.float32)
    points = np.empty((rows, COMPONENTS), np.float32)
    for start in range(0, rows, 100_000):
        block = points[start : start + 100_000]
        labels = rng.integers(CLUSTERS, size=len(block))
        noise = rng.standard_normal(block.shape, np.float32)
        block[:] = (centres[labels] + CLUSTER_SPREAD * noise) * scale
    return points


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(unit_rows(vectors))
    return flat.search(unit_rows(queries), K)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true K nearest that the index returned among its K."""
    hits = sum(len(np.intersect1d(row, true)) for row, true in zip(found, truth, strict=True))
    return hits / truth.size


def measure(rows: int, queries: int) -> dict:
    import faiss

    vectors, asked = clustered(rows, seed=1), unit_rows(clustered(queries, seed=2))
    started = time.perf_counter()
    index = build_index(vectors)
    build_s = time.perf_counter() - started
    truth = exact_neighbours(vectors, asked)
    del vectors
    probes = {}
    for lists in PROBES:
        params = faiss.SearchParametersIVF(nprobe=lists)
        started = time.perf_counter()
        found = index.search(asked, K, params=params)[1]
        batch_s = time.perf_counter() - started
        started = time.perf_counter()
        for row in asked[:SINGLE_QUERIES]:
            index.search(row[np.newaxis], K, params=params)
        single_ms = (time.perf_counter() - started) / min(SINGLE_QUERIES, queries) * 1000
        probes[lists] = {
            "recall_at_10": recall(found, truth),
            "batch_query_ms": batch_s / queries * 1000,
            "single_query_ms": single_ms,
        }
    return {
        "rows": rows,
        "components": COMPONENTS,
        "lists": index.nlist,
        "build_s": build_s,
        "search_probed_lists": SEARCH_PROBED_LISTS,
        "recall_at_10": probes[SEARCH_PROBED_LISTS]["recall_at_10"],
        "probes": probes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def table(result: dict) -> str:
    """The figures as text lines, one per number of probed lists."""
    lines = [
        f"Search recall@10 against exact search: {result['rows']:,} clustered rows of "
        f"{result['components']} components, IVF-Flat of {result['lists']} lists built in "
        f"{result['build_s']:.1f} s, peak {result['peak_rss_mb']:.0f} MB"
    ]
    for lists, figures in result["probes"].items():
        chosen = "  <- search" if int(lists) == result["search_probed_lists"] else ""
        lines.append(
            f"  nprobe {int(lists):>4}: recall@10 {figures['recall_at_10']:.3f}, "
            f"{figures['single_query_ms']:.2f} ms a query alone, "
            f"{figures['batch_query_ms']:.3f} ms a query in a batch{chosen}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_recall", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the day")
    parser.add_argument("--queries", type=int, default=1000, help="query vectors")
    args = parser.parse_args(argv)
    result = measure(args.rows, args.queries)
    print(table(result))
    print_result(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

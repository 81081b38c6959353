"""The day's index: an IVF search scans as many lists as asked."""

from __future__ import annotations

import numpy as np

from beam_jobs.image_embeddings.search.index import (
    FLAT_MAX_ROWS,
    PROBED_LISTS,
    build_index,
    list_count,
    nearest,
    unit_rows,
)


def test_probing_every_list_gives_the_exact_neighbours():
    rows = FLAT_MAX_ROWS + 5000
    vectors = np.random.default_rng(0).normal(size=(rows, 8)).astype(np.float32)
    queries = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    index = build_index(vectors)
    exact = np.argsort(-(unit_rows(queries) @ unit_rows(vectors).T), axis=1)[:, :10]

    every = nearest(index, queries, 10, probes=list_count(rows))[1]
    default = nearest(index, queries, 10)[1]

    assert index.nprobe == PROBED_LISTS
    found = [len(np.intersect1d(got, true)) for got, true in zip(every, exact, strict=True)]
    assert np.mean(found) > 9.9
    assert not np.array_equal(default, every)

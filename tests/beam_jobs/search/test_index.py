"""The day's index: an IVF search scans as many lists as asked; searched list by list, it finds
what FAISS's own search finds."""

from __future__ import annotations

import numpy as np

from beam_jobs.image_embeddings.search.index import (
    FLAT_MAX_ROWS,
    PROBED_LISTS,
    build_index,
    list_count,
    nearest,
    neighbours_at_least,
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


def _clustered(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, 16)).astype(np.float32)
    return centres[rng.integers(40, size=rows)] + 0.4 * rng.normal(size=(rows, 16))


def _pairs(rows, others) -> set[tuple[int, int]]:
    return set(zip(rows.tolist(), others.tolist(), strict=True))


def test_the_list_by_list_search_finds_faiss_own_neighbours_above_the_floor():
    vectors = _clustered(FLAT_MAX_ROWS + 5000, 0)
    queries = vectors[:3000] + 0.05 * np.random.default_rng(1).normal(size=(3000, 16))
    index = build_index(vectors)
    similarities, ids = nearest(index, queries, 5)
    rows, columns = np.nonzero(similarities >= 0.9)

    found, others, scores = neighbours_at_least(index, queries, 5, 0.9)

    assert _pairs(found, others) == _pairs(rows, ids[rows, columns])
    assert len(found) > 3000  # clustered: most queries have several neighbours above the floor
    assert np.bincount(found).max() == 5
    assert scores.min() >= 0.9
    exact = np.sum(unit_rows(queries)[found] * unit_rows(vectors)[others], axis=1)
    np.testing.assert_allclose(scores, exact, atol=1e-5)


def test_a_crowded_list_keeps_only_the_nearest_k_of_each_query():
    copies = np.repeat(_clustered(1, 2), FLAT_MAX_ROWS + 100, axis=0)
    vectors = copies + 0.05 * np.random.default_rng(3).normal(size=copies.shape)
    index = build_index(vectors)
    similarities, _ = nearest(index, vectors[:20], 3)

    found, _, scores = neighbours_at_least(index, vectors[:20], 3, 0.5)

    assert np.bincount(found).tolist() == [3] * 20
    # Every row is above the floor: each query keeps its 3 most similar (ties aside).
    np.testing.assert_allclose(scores.reshape(20, 3), similarities, atol=1e-5)

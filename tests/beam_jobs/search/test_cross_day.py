"""Search over days whose PCAs differ: candidates rescored on full embeddings share one scale."""

from __future__ import annotations

import numpy as np

from beam_jobs.image_embeddings.analysis.day_index import write_day_index
from beam_jobs.image_embeddings.analysis.reduction import reduce_dimensions
from beam_jobs.image_embeddings.search.query import nearest_over_days
from tests.beam_jobs.analysis.test_duplicates import DIM, digests_of, write_day

EARLIER, DAY = "2026-11-27", "2026-11-28"
AXES = 4


def symmetric_day(rng: np.random.Generator, first_axis: int, pairs: int) -> np.ndarray:
    """Rows c ± v with v on AXES dimensions from `first_axis`: mean 0, PCA axes those dimensions."""
    half = np.zeros((pairs, DIM), np.float32)
    half[:, first_axis : first_axis + AXES] = rng.normal(size=(pairs, AXES))
    return np.concatenate([half, -half])


def test_a_cross_day_query_ranks_the_true_nearest_first(tmp_path):
    rng = np.random.default_rng(5)
    root = str(tmp_path / "embeddings")
    today = symmetric_day(rng, first_axis=4, pairs=50)
    query = today[7] + rng.normal(scale=0.05, size=DIM).astype(np.float32)
    earlier = symmetric_day(rng, first_axis=0, pairs=50)
    # On the earlier day's own PCA axes this image points exactly where the query does: a
    # similarity of 1 there, though in the full embeddings it is nothing like the query.
    earlier[3, :AXES] = 10 * query[:AXES]
    earlier[53, :AXES] = -10 * query[:AXES]
    for day, vectors in ((EARLIER, earlier), (DAY, today)):
        write_day(root, day, vectors, digests_of(day, len(vectors)))
        reduce_dimensions(f"{root}/{day}", n_components=AXES, sample_size=1000)
        write_day_index(f"{root}/{day}")

    hits = nearest_over_days(root, DAY, [DAY, EARLIER], query, 3)

    assert (hits[0].day, hits[0].uri) == (DAY, f"gs://photos/{DAY}/img-0007.jpg")
    assert hits[0].similarity > 0.95
    assert [hit.rank for hit in hits] == [1, 2, 3]
    planted = f"gs://photos/{EARLIER}/img-0003.jpg"
    assert all(hit.uri != planted or hit.similarity < 0.5 for hit in hits)

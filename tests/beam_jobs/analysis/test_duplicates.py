"""Exact and near duplicates within a day and against earlier days of the same fingerprint."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_jobs.image_embeddings.analysis import duplicates
from beam_jobs.image_embeddings.analysis.day_index import read_day_index, write_day_index
from beam_jobs.image_embeddings.analysis.duplicates import (
    count_in_validation,
    duplicates_schema,
    find_duplicates,
)
from beam_jobs.image_embeddings.analysis.reduction import reduce_dimensions
from beam_jobs.image_embeddings.contract import DUPLICATES_NAME, SUCCESS_MARKER, embeddings_schema
from beam_jobs.image_embeddings.search import index as neighbours
from beam_jobs.image_embeddings.storage import files as storage
from image_embeddings_airflow.dag.validation import REPORT_NAME
from tests.plugins.dag.test_validation import embeddings_table

DIM = 64
FINGERPRINT = "a1b2c3d4e5f60718"


def features(rows: int, seed: int, centre: float = 1.0) -> np.ndarray:
    """Non-negative vectors like pooled CNN features, around `centre`."""
    rng = np.random.default_rng(seed)
    return np.abs(centre + rng.normal(scale=0.6, size=(rows, DIM))).astype(np.float32)


def write_day(
    root: str,
    day: str,
    vectors: np.ndarray,
    digests: list[str],
    fingerprint: str = FINGERPRINT,
    shards: int = 2,
) -> list[str]:
    """A day's embeddings (real contract schema, with sha256) and `_SUCCESS`; returns its URIs."""
    folder = f"{root}/{day}"
    uris = [f"gs://photos/{day}/img-{row:04d}.jpg" for row in range(len(vectors))]
    schema = embeddings_schema(DIM)
    for shard in range(shards):
        table = embeddings_table(
            uris[shard::shards], vectors[shard::shards], schema, digests[shard::shards]
        )
        with storage.open_file(
            f"{folder}/embeddings-{shard:05d}-of-{shards:05d}.parquet", "wb"
        ) as f:
            pq.write_table(table, f)
    marker = {"images": len(uris), "embedded": len(uris), "failed": 0, "model": "resnet50"}
    storage.write_json(
        f"{folder}/{SUCCESS_MARKER}", {**marker, "dim": DIM, "model_fingerprint": fingerprint}
    )
    return uris


def reduce_and_index(folder: str):
    reduce_dimensions(folder, n_components=8, sample_size=1000)
    return write_day_index(folder)


def digests_of(day: str, rows: int) -> list[str]:
    return [f"{day}-{row}".encode().hex().ljust(64, "0") for row in range(rows)]


def read_rows(uri: str) -> list[dict]:
    with storage.open_file(uri, "rb") as handle:
        table = pq.read_table(handle)
    assert table.schema.equals(duplicates_schema())
    return table.to_pylist()


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "embeddings")


def two_days(root: str) -> tuple[list[str], list[str], list[str]]:
    """Day 27 (same fingerprint), day 26 (another fingerprint) and day 28 with planted copies."""
    earlier, other_model = features(60, seed=1), features(60, seed=2)
    today = features(60, seed=3)
    noise = np.random.default_rng(4).normal(scale=0.03, size=DIM).astype(np.float32)
    today[10] = earlier[3]  # byte copy of an image of day 27
    today[20] = earlier[5] + noise  # re-encoded copy of another
    today[30] = today[1]  # byte copy within the day
    today[40] = today[2] + noise  # re-encoded copy within the day
    today[50] = other_model[7]  # a copy of day 26, whose model differs
    early_digests, other_digests = digests_of("27", 60), digests_of("26", 60)
    today_digests = digests_of("28", 60)
    today_digests[10], today_digests[30] = early_digests[3], today_digests[1]
    today_digests[50] = other_digests[7]
    old = write_day(root, "2026-11-27", earlier, early_digests)
    write_day(root, "2026-11-26", other_model, other_digests, fingerprint="ffffffffffffffff")
    new = write_day(root, "2026-11-28", today, today_digests)
    for day in ("2026-11-26", "2026-11-27"):
        reduce_and_index(f"{root}/{day}")
    return old, new, today_digests


def expected_rows(old: list[str], new: list[str]) -> list[tuple]:
    return sorted(
        [
            (new[10], old[3], "exact", "2026-11-27"),
            (new[20], old[5], "near", "2026-11-27"),
            (new[30], new[1], "exact", "2026-11-28"),
            (new[40], new[2], "near", "2026-11-28"),
        ]
    )


def test_planted_copies_are_found_and_nothing_else(root):
    old, new, _ = two_days(root)
    folder = f"{root}/2026-11-28"
    reduce_and_index(folder)

    result = find_duplicates(folder, "2026-11-28", FINGERPRINT, 0.95, 30)

    rows = read_rows(f"{folder}/{DUPLICATES_NAME}")
    found = sorted((r["uri"], r["duplicate_of"], r["kind"], r["day_of_other"]) for r in rows)
    assert found == expected_rows(old, new)
    similarities = {r["uri"]: r["similarity"] for r in rows}
    assert similarities[new[10]] == similarities[new[30]] == 1.0
    assert 0.95 <= similarities[new[20]] < 1.0 and 0.95 <= similarities[new[40]] < 1.0
    assert result.counts["exact"] == 2 and result.counts["near"] == 2
    assert result.counts["images"] == 4 and result.counts["days_compared"] == ["2026-11-27"]
    assert "ffffffffffffffff" in result.counts["days_skipped"]["2026-11-26"]


def test_threshold_and_lookback_bound_the_search(root):
    old, new, _ = two_days(root)
    folder = f"{root}/2026-11-28"
    reduce_and_index(folder)

    strict = find_duplicates(folder, "2026-11-28", FINGERPRINT, 1.0, 30)
    assert strict.counts["near"] == 0 and strict.counts["exact"] == 2

    today_only = find_duplicates(folder, "2026-11-28", FINGERPRINT, 0.95, 0)
    assert today_only.counts["days_compared"] == []
    kinds = sorted(r["uri"] for r in read_rows(today_only.uri))
    assert kinds == sorted([new[30], new[40]])


def test_ivf_index_finds_the_same_copies(root, monkeypatch):
    monkeypatch.setattr(neighbours, "FLAT_MAX_ROWS", 20)
    old, new, _ = two_days(root)
    folder = f"{root}/2026-11-28"
    reduce_and_index(folder)
    assert type(read_day_index(folder).index).__name__ == "IndexIVFFlat"

    find_duplicates(folder, "2026-11-28", FINGERPRINT, 0.95, 30)

    rows = read_rows(f"{folder}/{DUPLICATES_NAME}")
    found = sorted((r["uri"], r["duplicate_of"], r["kind"], r["day_of_other"]) for r in rows)
    assert found == expected_rows(old, new)


def test_rows_without_digests_have_no_exact_copies(root):
    vectors = features(40, seed=5)
    vectors[9] = vectors[4]
    write_day(root, "2026-11-28", vectors, [None] * 40)
    folder = f"{root}/2026-11-28"
    reduce_and_index(folder)

    result = find_duplicates(folder, "2026-11-28", FINGERPRINT, 0.95, 30)

    # Identical vectors without digests: a near copy at similarity 1, not an exact one.
    assert [r["kind"] for r in read_rows(result.uri)] == ["near"]
    assert result.counts["days_compared"] == []


def test_counts_join_the_validation_report(day):
    storage.write_json(f"{day}/{REPORT_NAME}", {"ok": True})

    count_in_validation(day, {"exact": 1, "near": 2})

    assert storage.read_json(f"{day}/{REPORT_NAME}") == {
        "ok": True,
        "duplicates": {"exact": 1, "near": 2},
    }


def lookback(root: str) -> tuple[dict[str, list[str]], list[str]]:
    """Three earlier days and day 28, which holds an exact and a near copy of each."""
    today, digests = features(90, seed=20), digests_of("28", 90)
    noise = np.random.default_rng(21).normal(scale=0.03, size=DIM).astype(np.float32)
    earlier = {}
    for number, day in enumerate(("2026-11-25", "2026-11-26", "2026-11-27")):
        vectors, day_digests = features(60, seed=30 + number), digests_of(day, 60)
        today[10 + number], digests[10 + number] = vectors[4], day_digests[4]
        today[20 + number] = vectors[6] + noise
        earlier[day] = write_day(root, day, vectors, day_digests)
        reduce_and_index(f"{root}/{day}")
    new = write_day(root, "2026-11-28", today, digests)
    reduce_and_index(f"{root}/2026-11-28")
    return earlier, new


def planted(earlier: dict[str, list[str]], new: list[str]) -> list[tuple]:
    return sorted(
        [(new[10 + n], old[4], "exact", day) for n, (day, old) in enumerate(earlier.items())]
        + [(new[20 + n], old[6], "near", day) for n, (day, old) in enumerate(earlier.items())]
    )


def test_each_earlier_day_is_read_once_and_never_its_embeddings(root, monkeypatch):
    earlier, new = lookback(root)
    reads: list[str] = []
    for module, name in ((storage, "read_bytes"), (storage, "parquet_batches")):
        real = getattr(module, name)

        def spy(uri, *args, real=real, **kwargs):
            reads.append(uri)
            return real(uri, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    read_index = duplicates.read_index
    monkeypatch.setattr(
        duplicates,
        "read_index",
        lambda folder: reads.append(f"{folder}/neighbours.faiss") or read_index(folder),
    )

    result = find_duplicates(f"{root}/2026-11-28", "2026-11-28", FINGERPRINT, 0.95, 30)

    rows = read_rows(result.uri)
    found = sorted((r["uri"], r["duplicate_of"], r["kind"], r["day_of_other"]) for r in rows)
    assert found == planted(earlier, new)
    for day in earlier:
        of_day = sorted(uri.rsplit("/", 1)[1] for uri in reads if f"/{day}/" in uri)
        # Its axes (a few hundred kB) are read by the step that projects D and by the one that
        # confirms; its id map and index, once.
        expected = ["_SUCCESS", "neighbours-ids.parquet", "neighbours.faiss", "pca.npz", "pca.npz"]
        assert of_day == expected
    # Day 28's embeddings: once projected onto the three days' axes, once to confirm.
    shards = [uri for uri in reads if "/2026-11-28/embeddings-" in uri]
    assert len(shards) == 2 * len(set(shards)) == 4


def test_small_batches_give_the_same_duplicates(root, monkeypatch):
    from beam_jobs.image_embeddings.analysis import day_index, duplicates, reduction

    lookback(root)
    folder = f"{root}/2026-11-28"
    whole = read_rows(find_duplicates(folder, "2026-11-28", FINGERPRINT, 0.95, 30).uri)
    for module in (day_index, duplicates, reduction):
        monkeypatch.setattr(module, "BATCH_ROWS", 7)
    monkeypatch.setattr(duplicates, "CHECK_ROWS", 4)
    monkeypatch.setattr(duplicates, "QUERY_ROWS", 10)

    batched = read_rows(find_duplicates(folder, "2026-11-28", FINGERPRINT, 0.95, 30).uri)

    # The same rows; a cosine may differ in its last float32 bit (BLAS sums batches apart).
    assert [(r["uri"], r["duplicate_of"], r["kind"]) for r in batched] == [
        (r["uri"], r["duplicate_of"], r["kind"]) for r in whole
    ]
    assert [r["similarity"] for r in batched] == pytest.approx([r["similarity"] for r in whole])
    assert len(whole) >= 6

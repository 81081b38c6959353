"""Publishing days into a real PostgreSQL with pgvector: replaced whole, never duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest

from image_embeddings_airflow.publish.pgvector import publish_day
from tests.publish_days import FINGERPRINT, day_vectors, uris_of, write_day

REPO = Path(__file__).resolve().parents[3]
DIM = 2048
TABLE = "serving.image_embeddings"
DAY_1, DAY_2 = "2026-11-27", "2026-11-28"


@pytest.fixture
def database(postgres_uri):
    """A database of its own for each test, dropped afterwards."""
    name = f"publish_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(postgres_uri, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    uri = postgres_uri.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(uri, autocommit=True) as connection:
        connection.execute("CREATE SCHEMA serving")
    yield uri
    with psycopg.connect(postgres_uri, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _publish(uri: str, folder, day: str, **options) -> dict:
    with psycopg.connect(uri) as connection:
        return publish_day(connection, TABLE, str(folder), day, **options)


def _rows_by_day(uri: str) -> dict[str, list[str]]:
    with psycopg.connect(uri) as connection:
        rows = connection.execute(
            f"SELECT day::text, uri FROM {TABLE} ORDER BY day, uri"
        ).fetchall()
    by_day: dict[str, list[str]] = {}
    for day, image in rows:
        by_day.setdefault(day, []).append(image)
    return by_day


def test_two_days_then_a_rerun_replace_exactly_that_day(database, tmp_path):
    first = write_day(tmp_path / "run1", DAY_1, day_vectors(DAY_1, 30, DIM))
    second = write_day(tmp_path / "run1", DAY_2, day_vectors(DAY_2, 20, DIM))

    assert _publish(database, first, DAY_1)["rows"] == 30
    assert _publish(database, second, DAY_2)["rows"] == 20
    assert _rows_by_day(database) == {DAY_1: uris_of(DAY_1, 30), DAY_2: uris_of(DAY_2, 20)}

    # A rerun of day 2 with fewer images: its rows are replaced, day 1's untouched.
    rerun = write_day(tmp_path / "run2", DAY_2, day_vectors(DAY_2, 12, DIM), shards=3)
    assert _publish(database, rerun, DAY_2, batch_rows=5)["rows"] == 12
    assert _rows_by_day(database) == {DAY_1: uris_of(DAY_1, 30), DAY_2: uris_of(DAY_2, 12)}
    with psycopg.connect(database) as connection:
        partitions = connection.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits "
            f"WHERE inhparent = '{TABLE}'::regclass ORDER BY 1"
        ).fetchall()
        indexes = connection.execute(
            "SELECT indexrelid::regclass::text, indisvalid FROM pg_index "
            "JOIN pg_class c ON c.oid = indrelid WHERE c.relname LIKE 'image_embeddings_d%' "
            "ORDER BY 1"
        ).fetchall()
        fingerprints = connection.execute(
            f"SELECT DISTINCT model_fingerprint FROM {TABLE}"
        ).fetchall()
    assert partitions == [
        ("serving.image_embeddings_d20261127",),
        ("serving.image_embeddings_d20261128",),
    ]
    assert indexes == [
        ("serving.image_embeddings_d20261127_hnsw", True),
        ("serving.image_embeddings_d20261128_hnsw", True),
    ]
    assert fingerprints == [(FINGERPRINT,)]


def test_nearest_neighbour_query_finds_the_planted_copy_first(database, tmp_path):
    vectors = day_vectors(DAY_1, 200, DIM)
    planted = 137
    folder = write_day(tmp_path, DAY_1, vectors)
    _publish(database, folder, DAY_1)
    query = vectors[planted] + np.float32(0.01) * day_vectors(DAY_2, 1, DIM)[0]

    with psycopg.connect(database) as connection:
        from pgvector import HalfVector
        from pgvector.psycopg import register_vector

        register_vector(connection)
        connection.execute("SET enable_seqscan = off")
        plan = connection.execute(
            f"EXPLAIN SELECT uri FROM {TABLE} ORDER BY embedding <=> %s LIMIT 3",
            (HalfVector(query),),
        ).fetchall()
        hits = connection.execute(
            f"SELECT uri, 1 - (embedding <=> %s) FROM {TABLE} ORDER BY embedding <=> %s LIMIT 3",
            (HalfVector(query), HalfVector(query)),
        ).fetchall()

    assert "image_embeddings_d20261127_hnsw" in "\n".join(line for (line,) in plan)
    assert hits[0][0] == uris_of(DAY_1, 200)[planted]
    assert hits[0][1] > 0.999 > hits[1][1]


def test_a_publish_killed_before_its_commit_leaves_the_day_as_it_was(database, tmp_path):
    before = write_day(tmp_path / "run1", DAY_1, day_vectors(DAY_1, 10, DIM))
    _publish(database, before, DAY_1)
    after = write_day(tmp_path / "run2", DAY_1, day_vectors(DAY_2, 25, DIM))

    # A reader holds the table: the publish copies and indexes the new day, then waits to swap.
    with psycopg.connect(database) as reader:
        reader.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, psycopg\n"
                "from image_embeddings_airflow.publish.pgvector import publish_day\n"
                "with psycopg.connect(sys.argv[1]) as connection:\n"
                f"    publish_day(connection, {TABLE!r}, sys.argv[2], {DAY_1!r})\n",
                database,
                str(after),
            ],
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])},
        )
        try:
            _wait_for_lock_wait(database, child)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        reader.rollback()

    assert child.returncode == -signal.SIGKILL
    assert _rows_by_day(database) == {DAY_1: uris_of(DAY_1, 10)}
    # Its next run replaces the day.
    assert _publish(database, after, DAY_1)["rows"] == 25
    assert _rows_by_day(database) == {DAY_1: uris_of(DAY_1, 25)}


def _wait_for_lock_wait(uri: str, child: subprocess.Popen) -> None:
    """Until the child's session waits on a lock (its rows copied and indexed, uncommitted)."""
    deadline = time.monotonic() + 60
    with psycopg.connect(uri, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            assert child.poll() is None, "the publish ended before it had to wait"
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE 'DROP TABLE%'"
            ).fetchone()[0]
            if waiting:
                return
            time.sleep(0.1)
    raise AssertionError("the publish never reached its swap")

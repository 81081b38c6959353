"""Parquet sinks and the commit step: exactly one run's files, `_SUCCESS` last and consistent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_jobs.image_embeddings.contract import SUCCESS_KEYS, embeddings_schema, failures_schema
from beam_jobs.image_embeddings.outputs import (
    CommitOutput,
    ImageFacts,
    WriteEmbeddings,
    WriteFailures,
    embedding_row,
    failure_row,
    remove_earlier_run,
    shard_count,
    shard_paths,
    single_dim,
)
from beam_jobs.image_embeddings.storage import lease

RUN_INFO = {"model": "toy", "weights": "random", "started_at": "2026-11-28T10:00:00.000+00:00"}


def test_shard_paths_follow_beams_names():
    assert shard_paths("gs://b/out", "embeddings", 2) == [
        "gs://b/out/embeddings-00000-of-00002.parquet",
        "gs://b/out/embeddings-00001-of-00002.parquet",
    ]


def test_shard_count_reads_the_written_names():
    assert shard_count(["/o/failures-00000-of-00001.parquet"]) == 1
    assert shard_count(shard_paths("/o", "embeddings", 12)[3:5]) == 12


def test_shard_count_refuses_what_it_cannot_tell():
    with pytest.raises(RuntimeError, match="rerun"):
        shard_count([])
    with pytest.raises(RuntimeError, match=r"\[2, 3\]"):
        shard_count(["/o/e-00000-of-00002.parquet", "/o/e-00000-of-00003.parquet"])
    with pytest.raises(ValueError, match="unexpected shard name"):
        shard_count(["/o/embeddings.parquet"])


def test_single_dim():
    assert single_dim([2048, 2048], 2048) == 2048
    assert single_dim([576], None) == 576
    assert single_dim([], 1280) == 1280
    with pytest.raises(RuntimeError, match="different lengths"):
        single_dim([3, 4], None)
    with pytest.raises(RuntimeError, match="declares 4"):
        single_dim([3], 4)


def facts(uri: str, width: int = 640, height: int = 480) -> ImageFacts:
    return ImageFacts(uri, width, height, hashlib.sha256(uri.encode()).hexdigest(), 1000)


def test_embedding_row_stores_the_requested_float_type():
    row = embedding_row(facts("a.jpg"), np.array([0.5, 1.5], np.float32), "m", "float16")
    assert row["embedding"].dtype == np.float16
    assert (row["uri"], row["width"], row["height"], row["model"]) == ("a.jpg", 640, 480, "m")
    assert list(row) == embeddings_schema().names
    assert (row["sha256"], row["size_bytes"], row["reused_from"]) == (
        facts("a.jpg").sha256,
        1000,
        None,
    )


def test_failure_row_names_every_column_of_the_schema():
    row = failure_row({"uri": "x", "stage": "read", "error": "file not found"}, "m")
    assert list(row) == failures_schema().names
    assert row["sha256"] is None


def _rows(count: int, dim: int) -> list[dict]:
    return [
        embedding_row(
            facts(f"img-{i}.jpg", 10 + i, 20), np.full(dim, i, np.float32), "toy", "float32"
        )
        for i in range(count)
    ]


def _write_and_commit(
    output: str,
    rows: list[dict],
    failures: list[dict],
    num_shards: int = 0,
    extra_uris=(),
    fence: lease.Fence | None = None,
):
    with beam.Pipeline() as pipeline:
        embeddings = pipeline | "Rows" >> beam.Create(rows)
        failed = pipeline | "Failures" >> beam.Create(failures)
        listed = [r["uri"] for r in rows + failures] + list(extra_uris)
        uris = pipeline | "Uris" >> beam.Create(listed)
        _ = {
            "embeddings_files": embeddings
            | "WriteEmbeddings" >> WriteEmbeddings(output, 4, "float32", num_shards),
            "failures_files": failed | "WriteFailures" >> WriteFailures(output),
            "uris": uris,
            "embeddings": embeddings,
            "failures": failed,
            "duplicates": pipeline | "Duplicates" >> beam.Create([2]),
        } | "CommitOutput" >> CommitOutput(output, RUN_INFO, 4, fence)


def test_commit_leaves_exactly_this_runs_files(tmp_path: Path):
    output = tmp_path / "out"
    failure = failure_row({"uri": "bad.jpg", "stage": "decode", "error": "not an image"}, "toy")
    _write_and_commit(str(output), _rows(7, 4), [failure], num_shards=3)
    first = json.loads((output / "_SUCCESS").read_text())
    assert len(first["embeddings_files"]) == 3
    # Staging folders of interrupted attempts, then a rerun with fewer shards and no failures.
    (output / "beam-temp-embeddings-0123abcd").mkdir()
    (output / "beam-temp-embeddings-0123abcd" / "partial").write_bytes(b"x")
    (output / "beam-temp-failures-4567ef").mkdir()
    # The earlier run's embeddings, set aside at launch for reuse; two rows are copies of them.
    (output / "_previous_run").mkdir()
    (output / "_previous_run" / "embeddings-00000-of-00001.parquet").write_bytes(b"x")
    rows = [*_rows(3, 4), *(row | {"reused_from": "2026-11-27"} for row in _rows(5, 4)[3:])]

    _write_and_commit(str(output), rows, [], num_shards=2)

    marker = json.loads((output / "_SUCCESS").read_text())
    assert set(SUCCESS_KEYS) <= set(marker)
    assert (marker["images"], marker["embedded"], marker["failed"]) == (5, 5, 0)
    assert marker["reused"] == 2
    assert (marker["duplicates"], marker["dim"], marker["model"]) == (2, 4, "toy")
    assert marker["started_at"] == RUN_INFO["started_at"]
    assert marker["duration_s"] > 0
    names = sorted(path.name for path in output.iterdir())
    assert names == [
        "_SUCCESS",
        "embeddings-00000-of-00002.parquet",
        "embeddings-00001-of-00002.parquet",
        "failures-00000-of-00001.parquet",
    ]
    assert marker["embeddings_files"] == names[1:3]
    assert marker["failures_files"] == names[3:]
    table = pq.read_table([str(output / name) for name in names[1:3]])
    assert sorted(table.column("uri").to_pylist()) == [f"img-{i}.jpg" for i in range(5)]
    failures = pq.read_table(output / names[3])
    assert failures.num_rows == 0
    assert failures.schema.equals(failures_schema())


def test_commit_refuses_counts_that_do_not_add_up(tmp_path: Path):
    output = tmp_path / "out"
    with pytest.raises(Exception, match="not writing _SUCCESS"):
        _write_and_commit(str(output), _rows(2, 4), [], extra_uris=["lost.jpg"])
    assert not (output / "_SUCCESS").exists()


def test_a_commit_whose_run_lost_the_day_deletes_nothing_and_publishes_nothing(tmp_path: Path):
    """The run's lease expired and the day's next run took it and wrote its files: the old
    run's commit refuses before deleting them or writing `_SUCCESS`."""
    output = tmp_path / "out"
    stale = lease.acquire(str(output), "dag:image_embeddings:old", lease.timedelta(seconds=-1))
    lease.acquire(str(output), "dag:image_embeddings:new", lease.DEFAULT_TTL)
    (output / "manifest.txt").write_text("new run's manifest\n")
    (output / "embeddings-00000-of-00002.parquet").write_bytes(b"the new run's shard")
    fence = lease.Fence(str(output), stale.record.holder, stale.token)

    with pytest.raises(Exception, match="refusing to delete files this run did not write"):
        _write_and_commit(str(output), _rows(2, 4), [], num_shards=1, fence=fence)

    assert not (output / "_SUCCESS").exists()
    assert (output / "embeddings-00000-of-00002.parquet").read_bytes() == b"the new run's shard"


def test_a_commit_that_holds_the_day_completes(tmp_path: Path):
    output = tmp_path / "out"
    taken = lease.acquire(str(output), "dag:image_embeddings:run", lease.DEFAULT_TTL)

    _write_and_commit(
        str(output),
        _rows(2, 4),
        [],
        fence=lease.Fence(str(output), "dag:image_embeddings:run", taken.token),
    )

    assert json.loads((output / "_SUCCESS").read_text())["embedded"] == 2


def test_an_earlier_run_is_removed_and_the_run_inputs_stay(tmp_path: Path):
    earlier = ["_SUCCESS", "embeddings-00000-of-00002.parquet", "failures-00000-of-00001.parquet"]
    earlier += ["beam-temp-embeddings-1/part"]
    inputs = ["manifest.txt", "skipped.json", "_LEASE", "notes/readme.txt"]
    for name in earlier + inputs:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "beam-temp-failures-2").mkdir()

    removed = remove_earlier_run(str(tmp_path))

    assert removed[0] == str(tmp_path / "_SUCCESS")
    assert sorted(removed) == sorted(str(tmp_path / name) for name in earlier)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == sorted([*inputs, "notes"])

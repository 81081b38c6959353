"""Validation of a day's outputs: a good day passes, every kind of tampering is named."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_jobs.image_embeddings.contract import (
    MANIFEST_NAME,
    STAGE_DECODE,
    STAGE_READ,
    SUCCESS_MARKER,
    embeddings_schema,
    failures_schema,
)
from image_embeddings_airflow import storage
from image_embeddings_airflow.dag.validation import REPORT_NAME, ValidationError, validate_output

DIM = 16
EMB0 = "embeddings-00000-of-00002.parquet"
EMB1 = "embeddings-00001-of-00002.parquet"
FAILURES = "failures-00000-of-00001.parquet"


def write_table(uri: str, rows: list[dict], schema: pa.Schema) -> None:
    with storage.open_file(uri, "wb") as handle:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), handle)


def embeddings_table(
    uris: list[str],
    vectors: np.ndarray,
    schema: pa.Schema,
    digests: list[str] | None = None,
    thumbnails: list | None = None,
) -> pa.Table:
    """Rows of `embeddings-*.parquet`, built column-wise from a (rows, dim) matrix."""
    embedding_type = schema.field("embedding").type
    flat = pa.array(vectors.reshape(-1), type=embedding_type.value_type)
    if isinstance(embedding_type, pa.FixedSizeListType):
        embeddings = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    else:
        offsets = np.arange(len(vectors) + 1, dtype=np.int32) * vectors.shape[1]
        embeddings = pa.ListArray.from_arrays(pa.array(offsets), flat)
    values = {"uri": uris, "model": ["resnet50"] * len(uris)}
    values |= {"width": [640] * len(uris), "height": [480] * len(uris)}
    sha256 = digests or [hashlib.sha256(uri.encode()).hexdigest() for uri in uris]
    values |= {
        "sha256": sha256,
        "size_bytes": [1000] * len(uris),
        "reused_from": [None] * len(uris),
    }
    values["thumbnail"] = thumbnails or [None] * len(uris)
    columns = [
        embeddings if f.name == "embedding" else pa.array(values[f.name], f.type) for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def write_outputs(
    output_dir: str,
    vectors: np.ndarray,
    failed: int = 0,
    shards: int = 2,
    fixed_dim: bool = False,
    float_type: str = "float32",
) -> list[str]:
    """A day's outputs as the pipeline leaves them; returns the manifest's URIs."""
    uris = [f"{output_dir}/../images/img-{i:05d}.jpg" for i in range(len(vectors) + failed)]
    with storage.open_file(f"{output_dir}/{MANIFEST_NAME}", "w") as handle:
        handle.write("".join(uri + "\n" for uri in uris))
    schema = embeddings_schema(vectors.shape[1] if fixed_dim else None, float_type)
    names = [f"embeddings-{i:05d}-of-{shards:05d}.parquet" for i in range(shards)]
    for index, name in enumerate(names):
        table = embeddings_table(
            uris[index : len(vectors) : shards], vectors[index::shards], schema
        )
        with storage.open_file(f"{output_dir}/{name}", "wb") as handle:
            pq.write_table(table, handle)
    stages = [STAGE_READ, STAGE_DECODE]
    failures = [
        {"uri": uri, "stage": stages[i % 2], "error": "cannot identify image file", "model": "m"}
        for i, uri in enumerate(uris[len(vectors) :])
    ]
    write_table(f"{output_dir}/{FAILURES}", failures, failures_schema())
    marker = {
        "images": len(uris),
        "embedded": len(vectors),
        "failed": failed,
        "duplicates": 0,
        "model": "resnet50",
        "dim": int(vectors.shape[1]),
        "embeddings_files": names,
        "failures_files": [FAILURES],
    }
    storage.write_json(f"{output_dir}/{SUCCESS_MARKER}", marker)
    return uris


def random_vectors(count: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32) + 0.1


def problems_of(day: str, max_failure_rate: float = 0.5, **kwargs) -> str:
    with pytest.raises(ValidationError) as error:
        validate_output(day, max_failure_rate, **kwargs)
    report = storage.read_json(f"{day}/{REPORT_NAME}")
    assert report["ok"] is False
    assert report["problems"] == error.value.report.problems
    return str(error.value)


def test_good_day_passes_and_writes_report(day):
    write_outputs(day, random_vectors(40), failed=3)

    report = validate_output(day, max_failure_rate=0.1, expected_dim=DIM)

    assert report.ok and report.problems == []
    written = storage.read_json(f"{day}/{REPORT_NAME}")
    assert written["ok"] is True
    assert written["counts"]["images"] == 43
    assert (written["counts"]["embedded"], written["counts"]["failed"]) == (40, 3)
    assert written["failure_stages"] == {STAGE_DECODE: 1, STAGE_READ: 2}
    assert written["failure_rate"] == pytest.approx(3 / 43)
    assert written["dim"] == DIM
    assert all(check["passed"] for check in written["checks"])
    assert {check["name"] for check in written["checks"]} >= {"missing", "finite", "nonzero"}


def test_fixed_size_float16_embeddings_pass(tmp_path):
    day = str(tmp_path / "day")
    write_outputs(day, random_vectors(10), fixed_dim=True, float_type="float16")

    assert validate_output(day, 0.0).dim == DIM


def test_digests_and_the_reused_count_are_checked(tmp_path):
    day = str(tmp_path / "day")
    write_outputs(day, random_vectors(6))
    marker = storage.read_json(f"{day}/{SUCCESS_MARKER}") | {
        "model_fingerprint": "f00d",
        "reused": 0,
    }
    storage.write_json(f"{day}/{SUCCESS_MARKER}", marker)
    assert validate_output(day, 0.0).counts["reused"] == 0

    table = pq.read_table(f"{day}/{EMB0}")
    rows = table.to_pylist()
    rows[0]["reused_from"] = "2026-11-27"
    rows[1]["sha256"] = "not-a-digest"
    write_table(f"{day}/{EMB0}", rows, table.schema)
    message = problems_of(day)

    assert f"1 embeddings without the sha256 of their bytes: row 1 of {EMB0}" in message
    assert (
        "_SUCCESS says 0 reused but the embeddings shards hold 1 rows with reused_from" in message
    )


def test_deleted_shard_is_named(day):
    uris = write_outputs(day, random_vectors(10))
    storage.delete(f"{day}/{EMB1}")

    message = problems_of(day)

    assert "embeddings shard 1 of 2 missing" in message
    assert f"{EMB1} listed in _SUCCESS is missing" in message
    assert f"5 manifest entries missing from the outputs: {uris[1]}, {uris[3]}," in message
    assert "_SUCCESS says 10 embedded but the embeddings shards hold 5 rows" in message


def test_nan_infinity_and_zero_rows_are_named(tmp_path):
    day = str(tmp_path / "day")
    vectors = random_vectors(40)
    vectors[34, 3] = np.nan  # shard 0 holds rows 0, 2, 4...: this is its row 17
    vectors[5, 0] = np.inf
    vectors[8] = 0.0
    write_outputs(day, vectors)

    message = problems_of(day)

    assert (
        f"2 embeddings with NaN or infinity: row 17 of {EMB0} has NaN, row 2 of {EMB1} has infinity"
    ) in message
    assert f"1 all-zero embeddings: row 4 of {EMB0} is all zeros" in message


def test_duplicated_row_is_named(day):
    uris = write_outputs(day, random_vectors(6))
    table = pq.read_table(f"{day}/{EMB0}") if not day.startswith("gs://") else None
    if table is None:
        with storage.open_file(f"{day}/{EMB0}", "rb") as handle:
            table = pq.read_table(handle)
    with storage.open_file(f"{day}/{EMB0}", "wb") as handle:
        pq.write_table(pa.concat_tables([table, table.slice(1, 1)]), handle)

    message = problems_of(day)

    assert f"1 URIs written more than once: {uris[2]} in embeddings" in message
    assert "_SUCCESS says 6 embedded but the embeddings shards hold 7 rows" in message


def test_missing_success_marker_is_named(day):
    write_outputs(day, random_vectors(4))
    storage.delete(f"{day}/{SUCCESS_MARKER}")

    message = problems_of(day)

    assert "_SUCCESS missing: the job did not finish" in message


def test_extra_uri_is_named(day):
    write_outputs(day, random_vectors(4))
    extra = {"uri": "gs://elsewhere/extra.jpg", "stage": STAGE_READ, "error": "gone", "model": "m"}
    write_table(f"{day}/{FAILURES}", [extra], failures_schema())

    message = problems_of(day)

    assert "1 output URIs not in the manifest: gs://elsewhere/extra.jpg" in message
    assert "_SUCCESS says 0 failed but the failures shards hold 1 rows" in message


def test_wrong_dimension_is_named(tmp_path):
    day = str(tmp_path / "day")
    write_outputs(day, random_vectors(3))

    message = problems_of(day, expected_dim=2048)

    assert "_SUCCESS says dim 16 but 2048 is expected" in message
    assert f"3 embeddings of the wrong dimension: row 0 of {EMB0} has 16 values" in message


def test_failure_rate_above_threshold_fails(tmp_path):
    day = str(tmp_path / "day")
    write_outputs(day, random_vectors(8), failed=2)

    message = problems_of(day, max_failure_rate=0.1)

    assert "failure rate 20.0% (2 of 10), maximum 10.0% exceeded" in message
    assert validate_output(day, max_failure_rate=0.2).failure_rate == pytest.approx(0.2)


def test_bad_failure_records_and_overlap_are_named(tmp_path):
    day = str(tmp_path / "day")
    uris = write_outputs(day, random_vectors(4), failed=2)
    rows = [
        {"uri": uris[4], "stage": "unpacking", "error": "x", "model": "m"},
        {"uri": uris[5], "stage": STAGE_READ, "error": "  ", "model": "m"},
        {"uri": uris[0], "stage": STAGE_READ, "error": "also failed", "model": "m"},
    ]
    write_table(f"{day}/{FAILURES}", rows, failures_schema())

    message = problems_of(day)

    assert f"row 0 of {FAILURES} has stage 'unpacking'" in message
    assert f"row 1 of {FAILURES} has no error message" in message
    assert f"1 URIs both embedded and failed: {uris[0]}" in message


def test_marker_counts_that_do_not_add_up_are_named(tmp_path):
    day = str(tmp_path / "day")
    write_outputs(day, random_vectors(4))
    marker = storage.read_json(f"{day}/{SUCCESS_MARKER}")
    storage.write_json(f"{day}/{SUCCESS_MARKER}", {**marker, "images": 5})

    message = problems_of(day)

    assert "_SUCCESS counts disagree: 4 embedded + 0 failed != 5 images" in message
    assert "_SUCCESS says 5 images but manifest.txt holds 4 distinct entries" in message


def test_unreadable_shard_is_named(tmp_path):
    day = str(tmp_path / "day")
    uris = write_outputs(day, random_vectors(4))
    storage.write_bytes(f"{day}/{EMB0}", b"PAR1 truncated")
    extra = {"uri": "/elsewhere/extra.jpg", "stage": STAGE_READ, "error": "gone", "model": "m"}
    write_table(f"{day}/{FAILURES}", [extra], failures_schema())

    message = problems_of(day)

    assert f"{EMB0} cannot be read:" in message
    assert f"2 manifest entries missing from the outputs: {uris[0]}, {uris[2]}" in message
    assert "1 output URIs not in the manifest: /elsewhere/extra.jpg" in message


def test_report_lists_examples_and_counts(tmp_path):
    day = str(tmp_path / "day")
    uris = write_outputs(day, random_vectors(20))
    storage.delete(f"{day}/{EMB0}")

    with pytest.raises(ValidationError):
        validate_output(day, 0.5)

    with open(f"{day}/{REPORT_NAME}", encoding="utf-8") as handle:
        report = json.load(handle)
    missing = next(check for check in report["checks"] if check["name"] == "missing")
    assert missing["passed"] is False and missing["count"] == 10
    assert missing["examples"] == uris[0:10:2]
    assert report["counts"]["embeddings_shards"] == 1


def test_refuses_a_bad_threshold(tmp_path):
    with pytest.raises(ValueError, match="maximum failure rate must be a fraction between 0 and 1"):
        validate_output(str(tmp_path), 1.5)

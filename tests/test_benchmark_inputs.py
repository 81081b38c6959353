"""The benchmarks' generated inputs keep to the pipeline's contract, so `make bench` runs."""

from __future__ import annotations

from beam_jobs.image_embeddings.contract import embeddings_schema
from benchmarks.daily import write_synthetic_day
from image_embeddings_airflow.validation import validate_output


def test_a_synthetic_day_is_a_valid_day_of_the_current_schema(tmp_path):
    import pyarrow.parquet as pq

    day = write_synthetic_day(tmp_path / "day", rows=20, dim=8)
    report = validate_output(str(day), max_failure_rate=0, expected_dim=8)
    assert report.ok, report.problems
    assert report.counts["embedded"] == 20
    (shard,) = day.glob("embeddings-*.parquet")
    assert pq.read_schema(shard).equals(embeddings_schema(8))

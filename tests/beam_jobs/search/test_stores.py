"""`search --store`: the nearest images asked of the pgvector table (real PostgreSQL) and the
BigQuery VECTOR_SEARCH query (parsed; no BigQuery is reachable here)."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
import sqlglot
from sqlglot import exp

from beam_jobs.image_embeddings.search.query import parse_args
from beam_jobs.image_embeddings.search.stores import (
    bigquery_sql,
    bigquery_table,
    connection_uri,
    day_range,
    pgvector_hits,
)
from image_embeddings_airflow.publish.pgvector import publish_day
from tests.publish_days import FINGERPRINT, day_vectors, uris_of, write_day

DIM = 64
DAYS = ("2026-11-26", "2026-11-27", "2026-11-28")


def test_pgvector_hits_rank_days_in_range_by_cosine(postgres_uri, tmp_path):
    with psycopg.connect(postgres_uri, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS store_search WITH (FORCE)")
        admin.execute("CREATE DATABASE store_search")
    uri = postgres_uri.rsplit("/", 1)[0] + "/store_search"
    vectors = {day: day_vectors(day, 50, DIM) for day in DAYS}
    with psycopg.connect(uri) as connection:
        for day in DAYS:
            publish_day(connection, "embeddings", str(write_day(tmp_path, day, vectors[day])), day)
    query = vectors["2026-11-27"][7]

    hits = pgvector_hits(uri, "embeddings", query, FINGERPRINT, day_range("2026-11-27", 2), 5)
    other = pgvector_hits(uri, "embeddings", query, "another-model", day_range(DAYS[2], 3), 5)

    assert hits[0][:2] == ("2026-11-27", uris_of("2026-11-27", 50)[7])
    assert hits[0][2] > 0.999
    assert {day for day, _, _ in hits} <= {"2026-11-26", "2026-11-27"}
    assert [similarity for _, _, similarity in hits] == sorted(
        (similarity for _, _, similarity in hits), reverse=True
    )
    assert other == []


def test_bigquery_query_parses_and_carries_the_query_vector():
    vector = np.linspace(0, 1, 8, dtype=np.float32)

    statement = bigquery_sql("p.serving.t", vector, "fp-1", day_range("2026-11-28", 7), 10)

    tree = sqlglot.parse_one(statement, read="bigquery")
    search = tree.find(exp.VectorSearch)
    assert search.args["top_k"].expression.sql() == "10"
    literal = search.args["query_table"].find(exp.Array)
    np.testing.assert_allclose([float(v.name) for v in literal.expressions], vector, rtol=1e-6)
    days = [literal.name for literal in tree.find_all(exp.Literal) if "2026" in literal.name]
    assert days == ["2026-11-22", "2026-11-28"]


def test_store_settings_and_arguments(monkeypatch):
    monkeypatch.setenv("IMAGE_EMBEDDINGS_PGVECTOR_CONN_ID", "serving")
    monkeypatch.setenv("AIRFLOW_CONN_SERVING", "postgresql://u@db:5432/serving")
    assert connection_uri() == "postgresql://u@db:5432/serving"
    monkeypatch.setenv("AIRFLOW_CONN_SERVING", '{"conn_type": "postgres"}')
    with pytest.raises(ValueError, match="pass --pg_uri, or set AIRFLOW_CONN_SERVING"):
        connection_uri()
    args = parse_args(["--date", "2026-11-28", "--image", "x.jpg", "--output_root", "/o"])
    assert args.store == "files"
    args = parse_args(
        ["--date", "2026-11-28", "--image", "x.jpg", "--output_root", "/o", "--store", "bigquery"]
    )
    monkeypatch.setenv("IMAGE_EMBEDDINGS_BIGQUERY_TABLE", "serving.t")
    monkeypatch.setenv("IMAGE_EMBEDDINGS_GCP_PROJECT", "p")
    assert bigquery_table(args) == "p.serving.t"

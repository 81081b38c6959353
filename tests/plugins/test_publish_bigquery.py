"""Publishing days into BigQuery: the jobs the operator submits, their SQL parsed, the rows."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import sqlglot
from airflow.sdk.exceptions import AirflowSkipException
from google.cloud import bigquery
from sqlglot import exp

from image_embeddings_airflow.publish_bigquery import (
    BigQueryPublishOperator,
    similar_images_query,
    table_reference,
    vector_index_statement,
)
from tests.publish_days import FINGERPRINT, day_vectors, uris_of, write_day

DAY = "2026-11-28"
REFERENCE = {"projectId": "my-project", "datasetId": "serving", "tableId": "image_embeddings"}


def _plan(output_root: str, **changes) -> dict:
    return {
        "day": DAY,
        "output_dir": f"{output_root}/{DAY}",
        "publish": "bigquery,pgvector",
        "bigquery_table": "serving.image_embeddings",
        "bigquery_location": "EU",
        "gcp_project": "my-project",
        "gcp_conn_id": "google_cloud_default",
        **changes,
    }


def _operator(plan: dict, job: str) -> BigQueryPublishOperator:
    operator = BigQueryPublishOperator(task_id=f"{job}_bigquery", plan=plan, job=job)
    operator.configure()
    return operator


def test_table_reference():
    assert table_reference("serving.image_embeddings", "my-project") == REFERENCE
    assert table_reference("other-project.serving.image_embeddings", "my-project")["projectId"] == (
        "other-project"
    )
    with pytest.raises(ValueError, match="names no project"):
        table_reference("serving.image_embeddings", None)


def test_load_job_replaces_the_day_partition_with_the_day_rows(tmp_path, gcs_bucket):
    # A local day's rows, as the pipeline wrote them, copied to the emulator's bucket.
    vectors = day_vectors(DAY, 40, 64).astype(np.float16)
    local = write_day(tmp_path, DAY, vectors, shards=2)
    root = f"gs://{gcs_bucket.name}/embeddings"
    for path in local.iterdir():
        gcs_bucket.blob(f"embeddings/{DAY}/{path.name}").upload_from_filename(str(path))

    operator = _operator(_plan(root), "load")

    load = operator.configuration["load"]
    assert load["destinationTable"] == {**REFERENCE, "tableId": "image_embeddings$20261128"}
    assert load["writeDisposition"] == "WRITE_TRUNCATE"
    assert load["timePartitioning"] == {"type": "DAY", "field": "day"}
    assert load["sourceFormat"] == "PARQUET"
    assert load["parquetOptions"] == {"enableListInference": True}
    assert load["sourceUris"] == [
        f"{root}/{DAY}/publish/bigquery-00000-of-00002.parquet",
        f"{root}/{DAY}/publish/bigquery-00001-of-00002.parquet",
    ]
    assert [(f["name"], f["type"], f["mode"]) for f in load["schema"]["fields"]] == [
        ("day", "DATE", "REQUIRED"),
        ("uri", "STRING", "REQUIRED"),
        ("sha256", "STRING", "NULLABLE"),
        ("model_fingerprint", "STRING", "REQUIRED"),
        ("embedding", "FLOAT64", "REPEATED"),
    ]
    assert (operator.project_id, operator.location) == ("my-project", "EU")
    # The BigQuery client library reads the configuration as a load job's.
    parsed = bigquery.LoadJobConfig.from_api_repr(operator.configuration)
    assert parsed.write_disposition == "WRITE_TRUNCATE"
    assert parsed.time_partitioning.field == "day"
    assert [field.name for field in parsed.schema] == [
        "day",
        "uri",
        "sha256",
        "model_fingerprint",
        "embedding",
    ]
    # The source files hold the day's rows, each with its day and fingerprint.
    tables = []
    for uri in load["sourceUris"]:
        blob = gcs_bucket.blob(uri.removeprefix(f"gs://{gcs_bucket.name}/"))
        path = tmp_path / uri.rsplit("/", 1)[1]
        blob.download_to_filename(str(path))
        tables.append(pq.read_table(path))
    rows = [row for table in tables for row in table.to_pylist()]
    assert [row["uri"] for row in rows] == uris_of(DAY, 40)
    assert {(str(row["day"]), row["model_fingerprint"]) for row in rows} == {(DAY, FINGERPRINT)}
    assert str(tables[0].schema.field("embedding").type) == "list<element: float>"
    np.testing.assert_allclose(
        np.array([row["embedding"] for row in rows]), vectors.astype(np.float32)
    )


def test_index_job_creates_the_ivf_index_once(tmp_path):
    operator = _operator(_plan(str(tmp_path)), "index")

    query = operator.configuration["query"]
    assert query["useLegacySql"] is False
    assert query["query"] == vector_index_statement(REFERENCE)
    statement = query["query"]
    # sqlglot has no grammar for CREATE VECTOR INDEX: its tokens are checked instead.
    tokens = [token.text.upper() for token in sqlglot.tokenize(statement, read="bigquery")]
    assert tokens[:6] == ["CREATE", "VECTOR", "INDEX", "IF", "NOT", "EXISTS"]
    assert "MY-PROJECT.SERVING.IMAGE_EMBEDDINGS" in tokens
    assert "'IVF'" in statement and "'COSINE'" in statement


def test_publishing_elsewhere_skips_the_bigquery_jobs(tmp_path):
    with pytest.raises(AirflowSkipException, match="off for this run"):
        _operator(_plan(str(tmp_path), publish="pgvector"), "load")
    with pytest.raises(AirflowSkipException):
        _operator(_plan(str(tmp_path), publish=None), "index")


def test_similar_images_query_parses_as_bigquery():
    statement = similar_images_query(REFERENCE, top_k=5)

    tree = sqlglot.parse_one(statement, read="bigquery")

    search = tree.find(exp.VectorSearch)
    assert search.args["column_to_search"].name == "embedding"
    assert search.args["top_k"].expression.sql() == "6"  # the image itself comes back too
    assert search.args["distance_type"].expression.name == "COSINE"
    tables = {
        (table.catalog, table.db, table.name)
        for table in tree.find_all(exp.Table)
        if not isinstance(table.this, exp.VectorSearch)
    }
    assert tables == {("my-project", "serving", "image_embeddings")}
    assert {parameter.name for parameter in tree.find_all(exp.Parameter)} == {"uri", "day"}

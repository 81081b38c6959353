"""Publishing days into BigQuery: the jobs submitted through the provider's hook, their SQL
parsed, the rows they load. No BigQuery is reachable here: the hook's `insert_job` records."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import sqlglot
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from google.cloud import bigquery
from sqlglot import exp

from image_embeddings_airflow.dag import tasks as dag_tasks
from image_embeddings_airflow.publish.bigquery import (
    similar_images_query,
    table_reference,
    vector_index_statement,
)
from tests.publish_days import FINGERPRINT, day_vectors, uris_of, write_day

DAY = "2026-11-28"
REFERENCE = {"projectId": "my-project", "datasetId": "serving", "tableId": "image_embeddings"}


HOLDER = "image_embeddings/manual__2026-11-28"


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


class RecordedJob:
    def __init__(self, number: int) -> None:
        self.job_id = f"job-{number}"


@pytest.fixture
def submitted(monkeypatch) -> list[dict]:
    """Every job given to the provider's BigQueryHook.insert_job, with its arguments."""
    from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook

    calls: list[dict] = []
    monkeypatch.setenv(
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
        '{"conn_type": "google_cloud_platform", "extra": {"is_anonymous": true}}',
    )

    def insert_job(hook, **arguments):
        calls.append({**arguments, "gcp_conn_id": hook.gcp_conn_id})
        return RecordedJob(len(calls))

    monkeypatch.setattr(BigQueryHook, "insert_job", insert_job)
    return calls


def test_table_reference():
    assert table_reference("serving.image_embeddings", "my-project") == REFERENCE
    assert table_reference("other-project.serving.image_embeddings", "my-project")["projectId"] == (
        "other-project"
    )
    with pytest.raises(ValueError, match="names no project"):
        table_reference("serving.image_embeddings", None)


def test_load_job_replaces_the_day_partition_with_the_day_rows(tmp_path, gcs_bucket, submitted):
    # A local day's rows, as the pipeline wrote them, copied to the emulator's bucket.
    vectors = day_vectors(DAY, 40, 64).astype(np.float16)
    local = write_day(tmp_path, DAY, vectors, shards=2)
    root = f"gs://{gcs_bucket.name}/embeddings"
    for path in local.iterdir():
        gcs_bucket.blob(f"embeddings/{DAY}/{path.name}").upload_from_filename(str(path))

    plan = _plan(root)
    result = dag_tasks.publish_bigquery(plan, HOLDER, dag_tasks.claim_day(plan, HOLDER))

    assert result["jobs"] == ["job-1", "job-2"]
    load_job, index_job = submitted
    assert {key: load_job[key] for key in ("project_id", "location", "nowait", "gcp_conn_id")} == {
        "project_id": "my-project",
        "location": "EU",
        "nowait": False,
        "gcp_conn_id": "google_cloud_default",
    }
    assert index_job["configuration"]["query"]["query"] == vector_index_statement(REFERENCE)
    load = load_job["configuration"]["load"]
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
    # The BigQuery client library reads the configuration as a load job's.
    parsed = bigquery.LoadJobConfig.from_api_repr(load_job["configuration"])
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


def test_index_job_creates_the_ivf_index_once():
    statement = vector_index_statement(REFERENCE)

    # sqlglot has no grammar for CREATE VECTOR INDEX: its tokens are checked instead.
    tokens = [token.text.upper() for token in sqlglot.tokenize(statement, read="bigquery")]
    assert tokens[:6] == ["CREATE", "VECTOR", "INDEX", "IF", "NOT", "EXISTS"]
    assert "MY-PROJECT.SERVING.IMAGE_EMBEDDINGS" in tokens
    assert "'IVF'" in statement and "'COSINE'" in statement


def test_publishing_elsewhere_skips_the_bigquery_jobs(tmp_path, submitted):
    with pytest.raises(AirflowSkipException, match="publishing to bigquery is off"):
        dag_tasks.publish_bigquery(_plan(str(tmp_path), publish="pgvector"), HOLDER, 1)
    with pytest.raises(AirflowSkipException):
        dag_tasks.publish_bigquery(_plan(str(tmp_path), publish=None), HOLDER, 1)
    assert submitted == []


def test_a_run_that_lost_its_day_publishes_nothing(tmp_path, submitted):
    plan = _plan(str(tmp_path))
    token = dag_tasks.claim_day(plan, HOLDER)
    dag_tasks.release_day(plan, HOLDER, token, {})
    assert dag_tasks.claim_day(plan, "image_embeddings/a-later-run") is not None

    with pytest.raises(AirflowFailException, match="publish the day to BigQuery"):
        dag_tasks.publish_bigquery(plan, HOLDER, token)
    assert submitted == []


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

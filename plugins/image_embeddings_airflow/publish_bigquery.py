"""Publish a validated day into BigQuery: one table partitioned by day, D's partition replaced.

The day's rows are written next to its outputs as Parquet (`OUTPUT_ROOT/D/publish/`, one file per
embeddings shard, streamed), then one load job writes them into `table$YYYYMMDD` with
WRITE_TRUNCATE: a rerun or backfill of D replaces exactly D's partition, atomically, and no
other day. A second job creates the table's IVF vector index once (IF NOT EXISTS); BigQuery
leaves it unpopulated while the table is under 10 MB and searches by brute force meanwhile.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from airflow.providers.google.cloud.operators.bigquery import BigQueryInsertJobOperator
from airflow.sdk.exceptions import AirflowSkipException

from beam_jobs.image_embeddings.contract import EMBEDDINGS_PREFIX, FINGERPRINT_KEY, join
from image_embeddings_airflow import storage
from image_embeddings_airflow.published_rows import day_marker, day_shards, shard_batches

PUBLISH_FOLDER = "publish"
ROWS_PREFIX = "bigquery"
TARGET = "bigquery"
# BigQuery's VECTOR_SEARCH reads ARRAY<FLOAT64>; Parquet float32 lists load into it.
SCHEMA_FIELDS = [
    {"name": "day", "type": "DATE", "mode": "REQUIRED"},
    {"name": "uri", "type": "STRING", "mode": "REQUIRED"},
    {"name": "sha256", "type": "STRING", "mode": "NULLABLE"},
    {"name": "model_fingerprint", "type": "STRING", "mode": "REQUIRED"},
    {"name": "embedding", "type": "FLOAT64", "mode": "REPEATED"},
]


def table_reference(table: str, default_project: str | None) -> dict[str, str]:
    """`project.dataset.table` (or `dataset.table` in `default_project`) as a TableReference."""
    parts = table.split(".")
    if len(parts) == 2:
        parts.insert(0, default_project)
    project, dataset, name = parts
    if not project:
        raise ValueError(f"BigQuery table {table!r} names no project and none is set")
    return {"projectId": project, "datasetId": dataset, "tableId": name}


def sql_name(reference: Mapping[str, str]) -> str:
    """The table as standard SQL writes it: `project.dataset.table` in backquotes."""
    return f"`{reference['projectId']}.{reference['datasetId']}.{reference['tableId']}`"


def partition_id(day: str) -> str:
    """Day D's partition decorator: YYYYMMDD."""
    return date.fromisoformat(day).strftime("%Y%m%d")


def rows_uri(output_dir: str, shard: str) -> str:
    """Where the day's publishable rows of one embeddings shard go."""
    name = posixpath.basename(shard).replace(EMBEDDINGS_PREFIX, ROWS_PREFIX, 1)
    return join(output_dir, PUBLISH_FOLDER, name)


def write_rows(output_dir: str, day: str) -> list[str]:
    """Write the day's rows as Parquet, one file per embeddings shard, streamed; their URIs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            pa.field("day", pa.date32(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            ("sha256", pa.string()),
            pa.field("model_fingerprint", pa.string(), nullable=False),
            ("embedding", pa.list_(pa.float32())),
        ]
    )
    fingerprint = day_marker(output_dir)[FINGERPRINT_KEY]
    written = []
    for shard in day_shards(output_dir):
        uri = rows_uri(output_dir, shard)
        with storage.open_file(uri, "wb") as handle, pq.ParquetWriter(handle, schema) as writer:
            for batch in shard_batches(shard, day, fingerprint):
                writer.write_batch(batch.cast(schema))
        written.append(uri)
    return written


def load_configuration(
    reference: Mapping[str, str], day: str, source_uris: Sequence[str]
) -> dict[str, Any]:
    """The load job that replaces day D's partition with the day's rows."""
    destination = {**reference, "tableId": f"{reference['tableId']}${partition_id(day)}"}
    return {
        "load": {
            "sourceUris": list(source_uris),
            "sourceFormat": "PARQUET",
            "parquetOptions": {"enableListInference": True},
            "destinationTable": destination,
            "writeDisposition": "WRITE_TRUNCATE",
            "createDisposition": "CREATE_IF_NEEDED",
            "timePartitioning": {"type": "DAY", "field": "day"},
            "schema": {"fields": SCHEMA_FIELDS},
        }
    }


def vector_index_statement(reference: Mapping[str, str]) -> str:
    """DDL of the table's IVF index on `embedding` (cosine), created once."""
    index = f"{reference['tableId']}_embedding"
    return (
        f"CREATE VECTOR INDEX IF NOT EXISTS `{index}` ON {sql_name(reference)}(embedding) "
        "OPTIONS(index_type = 'IVF', distance_type = 'COSINE')"
    )


def similar_images_query(reference: Mapping[str, str], top_k: int = 10) -> str:
    """VECTOR_SEARCH for the images like image @uri of day @day, under its model fingerprint."""
    table = sql_name(reference)
    return (
        "SELECT base.day, base.uri, 1 - distance AS similarity "
        "FROM VECTOR_SEARCH("
        f"(SELECT * FROM {table} WHERE model_fingerprint = "
        f"(SELECT model_fingerprint FROM {table} WHERE day = @day AND uri = @uri)), "
        "'embedding', "
        f"(SELECT embedding FROM {table} WHERE day = @day AND uri = @uri), "
        f"top_k => {top_k + 1}, distance_type => 'COSINE') "
        "WHERE base.uri != @uri OR base.day != @day "
        "ORDER BY distance"
    )


def query_configuration(statement: str) -> dict[str, Any]:
    return {"query": {"query": statement, "useLegacySql": False}}


class BigQueryPublishOperator(BigQueryInsertJobOperator):
    """One BigQuery job of a day's publishing, from the run plan: `load` (the day's rows are
    written to Cloud Storage first) or `index`. Skipped when the plan does not publish to
    BigQuery."""

    template_fields: Sequence[str] = (*BigQueryInsertJobOperator.template_fields, "plan")

    def __init__(self, *, plan: Any, job: str, **kwargs: Any) -> None:
        super().__init__(configuration={}, **kwargs)
        self.plan = plan
        self.job = job

    def configure(self) -> None:
        """Project, location, connection and job configuration from the plan."""
        plan = self.plan
        if TARGET not in (plan["publish"] or "").split(","):
            raise AirflowSkipException("publishing to BigQuery is off for this run")
        reference = table_reference(plan["bigquery_table"], plan["gcp_project"])
        self.project_id = reference["projectId"]
        self.location = plan["bigquery_location"]
        self.gcp_conn_id = plan["gcp_conn_id"]
        if self.job == "load":
            sources = write_rows(plan["output_dir"], plan["day"])
            self.configuration = load_configuration(reference, plan["day"], sources)
        else:
            self.configuration = query_configuration(vector_index_statement(reference))

    def execute(self, context: Any) -> Any:
        self.configure()
        return super().execute(context)

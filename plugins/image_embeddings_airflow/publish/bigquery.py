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

from beam_jobs.image_embeddings.contract import EMBEDDINGS_PREFIX, FINGERPRINT_KEY, join
from image_embeddings_airflow import storage
from image_embeddings_airflow.publish.rows import day_marker, day_shards, shard_batches

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


def jobs(plan: Mapping[str, Any], source_uris: Sequence[str]) -> list[dict[str, Any]]:
    """The day's BigQuery jobs, in order: the load of its rows, then the vector index."""
    reference = table_reference(plan["bigquery_table"], plan["gcp_project"])
    return [
        load_configuration(reference, plan["day"], source_uris),
        query_configuration(vector_index_statement(reference)),
    ]


def publish(plan: Mapping[str, Any]) -> dict[str, Any]:
    """Write the day's rows to Cloud Storage, then run its jobs, each to its end.

    The jobs go through the Google provider's BigQuery hook, imported here: its module loads
    pandas and pyarrow, which the DAG file must not (DAG parse time).
    """
    from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook

    reference = table_reference(plan["bigquery_table"], plan["gcp_project"])
    sources = write_rows(plan["output_dir"], plan["day"])
    hook = BigQueryHook(gcp_conn_id=plan["gcp_conn_id"], location=plan["bigquery_location"])
    done = []
    for configuration in jobs(plan, sources):
        job = hook.insert_job(
            configuration=configuration,
            project_id=reference["projectId"],
            location=plan["bigquery_location"],
            nowait=False,
        )
        done.append(job.job_id)
    return {"table": sql_name(reference), "day": plan["day"], "files": sources, "jobs": done}

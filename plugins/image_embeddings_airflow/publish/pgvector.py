"""Publish a validated day into PostgreSQL with pgvector: one partition a day, replaced whole.

The table is partitioned by day (LIST); each partition has its own HNSW index (cosine). A day is
replaced in one transaction: its rows are copied (binary COPY, streamed in record batches) into a
new table, which is indexed, then D's old partition is dropped and the new table attached in its
place. Readers see the old day until the commit, then the new one: never half a day, and no
other day is touched. A publish that dies before its commit leaves the table as it was.

Embeddings are stored as `halfvec`: pgvector indexes `vector` up to 2,000 dimensions and
`halfvec` up to 4,000, and ResNet50's are 2048-d. float16 halves the bytes; its rounding error
(~5e-4 relative) is far below the distances that tell images apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date
from typing import Any

from psycopg import sql

from beam_jobs.image_embeddings.contract import FINGERPRINT_KEY
from image_embeddings_airflow.publish.rows import BATCH_ROWS, COLUMNS, day_batches, day_marker

log = logging.getLogger(__name__)

OPCLASS = "halfvec_cosine_ops"


def _name(table: str) -> str:
    """The table's name without its schema: the stem of its partitions' and indexes' names."""
    return table.rsplit(".", 1)[-1]


def _identifier(table: str, suffix: str = "") -> sql.Identifier:
    """The table, or a table named after it in its schema, as a quoted identifier."""
    *schema, name = table.split(".")
    return sql.Identifier(*schema, name + suffix)


def partition_suffix(day: str) -> str:
    """The suffix of day D's partition name: `_dYYYYMMDD`."""
    return "_d" + date.fromisoformat(day).strftime("%Y%m%d")


def schema_statements(table: str, dim: int) -> list:
    """Idempotent DDL: the extension, the partitioned table, and its HNSW index."""
    return [
        sql.SQL("CREATE EXTENSION IF NOT EXISTS vector"),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {table} (day date NOT NULL, uri text NOT NULL, "
            "sha256 text, model_fingerprint text NOT NULL, embedding halfvec({dim}) NOT NULL) "
            "PARTITION BY LIST (day)"
        ).format(table=_identifier(table), dim=sql.Literal(dim)),
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS {index} ON {table} USING hnsw (embedding {ops})"
        ).format(
            index=sql.Identifier(_name(table) + "_hnsw"),
            table=_identifier(table),
            ops=sql.SQL(OPCLASS),
        ),
    ]


def create_schema(connection, table: str, dim: int) -> None:
    """Create what `schema_statements` names, once; then register pgvector's types."""
    from pgvector.psycopg import register_vector

    with connection.transaction():
        for statement in schema_statements(table, dim):
            connection.execute(statement)
    register_vector(connection)


def halfvec_payloads(vectors) -> bytes:
    """Every row's value in pgvector's binary halfvec format, back to back: the dimension count,
    a zero, then the values as big-endian float16."""
    import numpy as np

    rows, dim = vectors.shape
    payload = np.empty((rows, dim + 2), dtype=">u2")
    payload[:, 0], payload[:, 1] = dim, 0
    payload[:, 2:] = vectors.astype(">f2").view(">u2")
    return payload.tobytes()


class _Encoded:
    """Stands for a value already in its binary wire format (a key to register the dumper)."""


def _encoded_dumper(oid: int):
    """A binary dumper for `oid` that sends values as they are: encoded a batch at a time by
    numpy, not one Python object per row."""
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class EncodedDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj):
            return obj

    EncodedDumper.oid = oid
    return EncodedDumper


def copy_day(connection, staging, output_dir: str, day: str, batch_rows: int, on_batch) -> int:
    """Stream the day's rows into `staging` with binary COPY; the number of rows copied."""
    from psycopg.copy import QueuedLibpqWriter
    from psycopg.types import TypeInfo

    columns = sql.SQL(", ").join(sql.Identifier(column) for column in COLUMNS)
    # FREEZE: the table is new in this transaction, so its rows need no later freezing pass.
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY, FREEZE)").format(staging, columns)
    halfvec = TypeInfo.fetch(connection, "halfvec")
    copied = 0
    with connection.cursor() as cursor:
        cursor.adapters.register_dumper(_Encoded, _encoded_dumper(halfvec.oid))
        # A worker thread sends the data while this one encodes the next rows: the two overlap.
        with cursor.copy(statement, writer=QueuedLibpqWriter(cursor)) as copy:
            copy.set_types(["date", "text", "text", "text", "halfvec"])
            for batch in day_batches(output_dir, day, batch_rows):
                embeddings = batch.column("embedding")
                dim = embeddings.type.list_size
                vectors = embeddings.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
                payloads = memoryview(halfvec_payloads(vectors))
                size = len(payloads) // max(batch.num_rows, 1)
                columns = (batch.column(name).to_pylist() for name in COLUMNS[:4])
                for row, values in enumerate(zip(*columns, strict=True)):
                    copy.write_row((*values, payloads[row * size : (row + 1) * size]))
                copied += batch.num_rows
                if on_batch:
                    on_batch(copied)
    return copied


def publish_day(
    connection,
    table: str,
    output_dir: str,
    day: str,
    batch_rows: int = BATCH_ROWS,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Replace day D's partition of `table` with the day's validated rows, in one transaction."""
    marker = day_marker(output_dir)
    # Each `transaction()` block below is then one transaction of its own, committed at its end.
    connection.autocommit = True
    create_schema(connection, table, marker["dim"])
    suffix = partition_suffix(day)
    partition, staging = _identifier(table, suffix), _identifier(table, suffix + "_new")
    name = _name(table)
    with connection.transaction():
        connection.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(
                staging, _identifier(table)
            )
        )
        rows = copy_day(connection, staging, output_dir, day, batch_rows, on_batch)
        log.info("Copied %d rows of %s into %s; indexing them", rows, day, staging.as_string())
        # The check lets ATTACH skip its scan of the rows; the index is the one the parent's
        # partitioned index adopts instead of building another.
        connection.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK (day = {})").format(
                staging, sql.Identifier(name + suffix + "_day"), sql.Literal(day)
            )
        )
        connection.execute(
            sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding {})").format(
                sql.Identifier(name + suffix + "_new_hnsw"), staging, sql.SQL(OPCLASS)
            )
        )
        # From here to the commit, readers of the table wait: dropping a partition locks it.
        connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(partition))
        connection.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(staging, sql.Identifier(name + suffix))
        )
        connection.execute(
            sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                _identifier(table, suffix + "_new_hnsw"), sql.Identifier(name + suffix + "_hnsw")
            )
        )
        connection.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ({})").format(
                _identifier(table), partition, sql.Literal(day)
            )
        )
    log.info("Published %d rows of %s into %s", rows, day, table)
    return {"table": table, "day": day, "rows": rows, FINGERPRINT_KEY: marker[FINGERPRINT_KEY]}


def connect(conn_id: str):
    """A psycopg 3 connection from the Airflow connection `conn_id` (the pgvector provider's)."""
    from airflow.providers.pgvector.hooks.pgvector import PgVectorHook

    return PgVectorHook(postgres_conn_id=conn_id).get_conn()


def publish(conn_id: str, table: str, output_dir: str, day: str) -> dict[str, Any]:
    """`publish_day` through the Airflow connection `conn_id`."""
    connection = connect(conn_id)
    try:
        return publish_day(connection, table, output_dir, day)
    finally:
        connection.close()

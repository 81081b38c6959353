"""The rows a validated day publishes (day, uri, sha256, model_fingerprint, embedding), streamed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

from beam_jobs.image_embeddings.contract import (
    EMBEDDINGS_PREFIX,
    FINGERPRINT_KEY,
    SUCCESS_MARKER,
    join,
    shard_glob,
)
from image_embeddings_airflow import storage

COLUMNS = ("day", "uri", "sha256", "model_fingerprint", "embedding")
# 4096 rows of 2048 float32 values: 32 MB per batch, whatever the size of the day.
BATCH_ROWS = 4096


def day_marker(output_dir: str) -> dict[str, Any]:
    """The day's `_SUCCESS`: its dimension and model fingerprint label every published row."""
    marker = storage.read_json(join(output_dir, SUCCESS_MARKER))
    if not marker.get(FINGERPRINT_KEY):
        raise ValueError(
            f"{join(output_dir, SUCCESS_MARKER)} has no {FINGERPRINT_KEY}: embed the day again "
            "before publishing it"
        )
    return marker


def day_shards(output_dir: str) -> list[str]:
    """The day's embeddings shards, in order."""
    return sorted(storage.glob(shard_glob(output_dir, EMBEDDINGS_PREFIX)))


def shard_batches(
    shard: str, day: str, fingerprint: str, batch_rows: int = BATCH_ROWS
) -> Iterator[Any]:
    """One embeddings shard's rows as RecordBatches of `COLUMNS`."""
    import pyarrow as pa

    day_value = date.fromisoformat(day)
    for batch in storage.parquet_batches(shard, ["uri", "sha256", "embedding"], batch_rows):
        rows = batch.num_rows
        yield pa.record_batch(
            [
                pa.array([day_value] * rows, pa.date32()),
                batch.column("uri"),
                batch.column("sha256"),
                pa.array([fingerprint] * rows, pa.string()),
                batch.column("embedding"),
            ],
            names=list(COLUMNS),
        )


def day_batches(output_dir: str, day: str, batch_rows: int = BATCH_ROWS) -> Iterator[Any]:
    """The day's embedded images as RecordBatches of `COLUMNS`, shard after shard."""
    fingerprint = day_marker(output_dir)[FINGERPRINT_KEY]
    for shard in day_shards(output_dir):
        yield from shard_batches(shard, day, fingerprint, batch_rows)

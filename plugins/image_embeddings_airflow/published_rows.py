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


def day_batches(output_dir: str, day: str, batch_rows: int = BATCH_ROWS) -> Iterator[Any]:
    """The day's embedded images as RecordBatches of `COLUMNS`, shard after shard."""
    import pyarrow as pa

    fingerprint = day_marker(output_dir)[FINGERPRINT_KEY]
    day_value = pa.scalar(date.fromisoformat(day), pa.date32())
    for shard in sorted(storage.glob(shard_glob(output_dir, EMBEDDINGS_PREFIX))):
        for batch in storage.parquet_batches(shard, ["uri", "sha256", "embedding"], batch_rows):
            rows = batch.num_rows
            yield pa.record_batch(
                [
                    pa.array([day_value] * rows, pa.date32())
                    if rows
                    else pa.array([], pa.date32()),
                    batch.column("uri"),
                    batch.column("sha256"),
                    pa.array([fingerprint] * rows, pa.string()),
                    batch.column("embedding"),
                ],
                names=list(COLUMNS),
            )

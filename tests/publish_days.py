"""Validated days of known vectors, as the pipeline leaves them, for the publish tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from beam_jobs.image_embeddings.contract import (
    EMBEDDINGS_PREFIX,
    FINGERPRINT_KEY,
    SUCCESS_MARKER,
    embeddings_schema,
)

FINGERPRINT = "resnet50-test-fingerprint"


def day_vectors(day: str, rows: int, dim: int) -> np.ndarray:
    """Non-negative float32 vectors, like pooled ReLU features, seeded by the day."""
    seed = int(day.replace("-", ""))
    return np.abs(np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32))


def uris_of(day: str, rows: int) -> list[str]:
    return [f"gs://photos/{day}/image-{row:05d}.jpg" for row in range(rows)]


def write_day(root: Path, day: str, vectors: np.ndarray, shards: int = 2) -> Path:
    """Day D's output folder under `root` with `vectors` in `shards` embeddings files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / day
    folder.mkdir(parents=True, exist_ok=True)
    rows, dim = vectors.shape
    uris = uris_of(day, rows)
    schema = embeddings_schema(dim, model_fingerprint=FINGERPRINT)
    names = []
    for shard, part in enumerate(np.array_split(np.arange(rows), shards)):
        name = f"{EMBEDDINGS_PREFIX}-{shard:05d}-of-{shards:05d}.parquet"
        columns = {
            "uri": pa.array([uris[row] for row in part]),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors[part].ravel()), dim),
            "model": pa.array(["resnet50"] * len(part)),
            "width": pa.array([640] * len(part), pa.int32()),
            "height": pa.array([480] * len(part), pa.int32()),
            "sha256": pa.array([hashlib.sha256(uris[row].encode()).hexdigest() for row in part]),
            "size_bytes": pa.array([1000] * len(part), pa.int64()),
            "reused_from": pa.nulls(len(part), pa.string()),
            "thumbnail": pa.nulls(len(part), pa.binary()),
        }
        pq.write_table(pa.table(columns, schema=schema), folder / name)
        names.append(name)
    marker = {
        "images": rows,
        "embedded": rows,
        "failed": 0,
        "model": "resnet50",
        "dim": dim,
        FINGERPRINT_KEY: FINGERPRINT,
        "embeddings_files": names,
    }
    (folder / SUCCESS_MARKER).write_text(json.dumps(marker))
    return folder

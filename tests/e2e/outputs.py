"""Read back every file a DAG run writes for a day (local or gs://) and check it against inputs."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from beam_jobs.image_embeddings.contract import SUCCESS_MARKER, join
from image_embeddings_airflow import storage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _table(uri: str):
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)))


def _shards(output_dir: str, prefix: str) -> list[str]:
    return storage.glob(join(output_dir, f"{prefix}-*.parquet"))


def check_day_outputs(
    output_dir: str, embedded: list[str], failed: list[str], model: str, dim: int
) -> dict:
    """Assert that `output_dir` holds the complete outputs of one day; return its marker.

    `embedded` and `failed` are the input URIs expected in each output.
    """
    names = {uri.rsplit("/", 1)[1] for uri in storage.list_files(output_dir)}
    assert {
        "manifest.txt",
        SUCCESS_MARKER,
        "validation.json",
        "projection.parquet",
        "pca.npz",
        "projection.png",
        "embedding-sample.npy",
        "neighbours.faiss",
        "neighbours-ids.parquet",
        "duplicates.parquet",
        "drift.json",
        "report.html",
    } <= names, names

    manifest = storage.read_bytes(join(output_dir, "manifest.txt")).decode().splitlines()
    assert manifest == sorted(embedded + failed)

    embeddings = [_table(shard) for shard in _shards(output_dir, "embeddings")]
    uris = [uri for table in embeddings for uri in table.column("uri").to_pylist()]
    assert sorted(uris) == sorted(embedded)
    for table in embeddings:
        vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
        assert vectors.shape == (table.num_rows, dim)
        assert np.isfinite(vectors).all()
        assert set(table.column("model").to_pylist()) <= {model}
        thumbnails = table.column("thumbnail").to_pylist()
        assert all(Image.open(io.BytesIO(thumbnail)).format == "JPEG" for thumbnail in thumbnails)

    failures = [_table(shard) for shard in _shards(output_dir, "failures")]
    assert sorted(uri for table in failures for uri in table.column("uri").to_pylist()) == sorted(
        failed
    )
    assert all(error for table in failures for error in table.column("error").to_pylist())

    marker = storage.read_json(join(output_dir, SUCCESS_MARKER))
    assert (marker["images"], marker["embedded"], marker["failed"]) == (
        len(embedded) + len(failed),
        len(embedded),
        len(failed),
    )
    assert (marker["model"], marker["dim"]) == (model, dim)

    report = json.loads(storage.read_bytes(join(output_dir, "validation.json")))
    assert report["ok"] is True, report["problems"]
    assert report["counts"]["embedded"] == len(embedded)
    assert {"exact", "near", "images", "days_compared"} <= set(report["duplicates"])
    ids = _table(join(output_dir, "neighbours-ids.parquet"))
    assert sorted(ids.column("uri").to_pylist()) == sorted(embedded)
    drift = storage.read_json(join(output_dir, "drift.json"))
    assert drift["verdict"] in ("stable", "drift", "no comparable history", "too few images"), drift

    projection = _table(join(output_dir, "projection.parquet"))
    assert sorted(projection.column("uri").to_pylist()) == sorted(embedded)
    components = [name for name in projection.column_names if name != "uri"]
    assert components[:2] == ["pc1", "pc2"]
    with np.load(
        io.BytesIO(storage.read_bytes(join(output_dir, "pca.npz"))), allow_pickle=False
    ) as pca:
        assert pca["components"].shape == (len(components), dim)
        assert pca["mean"].shape == (dim,)
    assert storage.read_bytes(join(output_dir, "projection.png")).startswith(PNG_MAGIC)
    # A day this small is plotted whole: the report holds every image's thumbnail.
    report = storage.read_bytes(join(output_dir, "report.html")).decode().replace("\\u002f", "/")
    for table in embeddings:
        for thumbnail in table.column("thumbnail").to_pylist():
            assert base64.b64encode(thumbnail).decode() in report
    return marker

"""Validation, PCA reduction and duplicate search over a synthetic day of 2048-d embeddings.

`python -m benchmarks.daily {validate,reduce,duplicates} DAY_DIR` prints a BENCH_RESULT line; the
parent writes the day first with `write_synthetic_day` (contract schema, manifest, `_SUCCESS`),
and runs `duplicates` after `reduce` (it indexes the PCA projection), as the DAG does.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from beam_jobs.image_embeddings.contract import (
    EMBEDDINGS_PREFIX,
    FAILURES_PREFIX,
    MANIFEST_NAME,
    SHARD_SUFFIX,
    SUCCESS_MARKER,
    embeddings_schema,
    failures_schema,
)
from benchmarks.measure import print_result

DIM = 2048
SHARD_ROWS = 50_000
# Beam's WriteToParquet buffers 64 MiB per row group: 8192 rows of 2048 float32 values.
ROW_GROUP_ROWS = 8192
MODEL = "resnet50"
RECIPE_VERSION = 2
# The DAG's defaults (IMAGE_EMBEDDINGS_* settings).
MAX_FAILURE_RATE = 0.05
PCA_COMPONENTS = 50
PCA_SAMPLE_SIZE = 20_000
DUPLICATE_THRESHOLD = 0.95
LOOKBACK_DAYS = 30
# The day searched for duplicates; the synthetic day stands alone (no earlier day shares it).
DAY = "2026-01-01"


def shard_name(prefix: str, index: int, count: int) -> str:
    return f"{prefix}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def image_uri(row: int) -> str:
    return f"gs://bench-images/2026-01-01/image-{row:08d}.jpg"


def image_digest(row: int) -> str:
    """A distinct stand-in for the sha256 of image `row`'s bytes."""
    return f"{row:064x}"


def synthetic_vectors(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    """Non-negative float32 vectors, like average-pooled ReLU features."""
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    return np.abs(vectors, out=vectors)


def _write_shard(path: Path, first: int, rows: int, dim: int, rng: np.random.Generator) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = embeddings_schema(dim)
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for start in range(first, first + rows, ROW_GROUP_ROWS):
            count = min(ROW_GROUP_ROWS, first + rows - start)
            values = pa.array(synthetic_vectors(rng, count, dim).reshape(-1))
            columns = [
                pa.array([image_uri(row) for row in range(start, start + count)]),
                pa.FixedSizeListArray.from_arrays(values, dim),
                pa.array([MODEL] * count),
                pa.array(np.full(count, 640, np.int32)),
                pa.array(np.full(count, 480, np.int32)),
                pa.array([image_digest(row) for row in range(start, start + count)]),
                pa.array(np.full(count, 50_000, np.int64)),
                pa.nulls(count, pa.string()),  # reused_from: every row embedded by the model
                pa.nulls(count, pa.binary()),
            ]
            writer.write_batch(pa.record_batch(columns, schema=schema))


def _recipe(rows: int, dim: int) -> dict:
    return {"rows": rows, "dim": dim, "shard_rows": SHARD_ROWS, "version": RECIPE_VERSION}


def write_synthetic_day(folder: Path, rows: int, dim: int = DIM, seed: int = 0) -> Path:
    """A finished day of `rows` embedded images under `folder`; kept when already written."""
    import pyarrow.parquet as pq

    marker = folder / SUCCESS_MARKER
    recipe = _recipe(rows, dim)
    if marker.exists() and json.loads(marker.read_text()).get("synthetic") == recipe:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        stale.unlink()
    rng = np.random.default_rng(seed)
    count = math.ceil(rows / SHARD_ROWS)
    names = [shard_name(EMBEDDINGS_PREFIX, index, count) for index in range(count)]
    for index, name in enumerate(names):
        first = index * SHARD_ROWS
        _write_shard(folder / name, first, min(SHARD_ROWS, rows - first), dim, rng)
    failures = shard_name(FAILURES_PREFIX, 0, 1)
    pq.write_table(failures_schema().empty_table(), folder / failures)
    (folder / MANIFEST_NAME).write_text("".join(f"{image_uri(row)}\n" for row in range(rows)))
    success = {
        "images": rows,
        "embedded": rows,
        "failed": 0,
        "duplicates": 0,
        "model": MODEL,
        "dim": dim,
        "embeddings_files": names,
        "failures_files": [failures],
        "synthetic": recipe,
    }
    marker.write_text(json.dumps(success, indent=2) + "\n")
    return folder


def validate(folder: str) -> dict:
    from image_embeddings_airflow.dag.validation import validate_output

    report = validate_output(folder, MAX_FAILURE_RATE, expected_dim=DIM)
    return {"rows": report.counts["embedded"]}


def reduce(folder: str) -> dict:
    from beam_jobs.image_embeddings.analysis.reduction import reduce_dimensions

    result = reduce_dimensions(folder, PCA_COMPONENTS, PCA_SAMPLE_SIZE)
    return {"rows": result.rows, "components": result.n_components}


def duplicates(folder: str) -> dict:
    from beam_jobs.image_embeddings.analysis.day_index import read_index, write_day_index
    from beam_jobs.image_embeddings.analysis.duplicates import find_duplicates

    write_day_index(folder)
    result = find_duplicates(folder, DAY, None, DUPLICATE_THRESHOLD, LOOKBACK_DAYS)
    return {
        "rows": read_index(folder).ntotal,
        "exact": result.counts["exact"],
        "near": result.counts["near"],
    }


STEPS = {"validate": validate, "reduce": reduce, "duplicates": duplicates}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.daily", description=__doc__)
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("folder", help="a day's output folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    outcome = STEPS[args.step](args.folder)
    print_result({**outcome, "step": args.step, "seconds": time.perf_counter() - started})


if __name__ == "__main__":
    main()

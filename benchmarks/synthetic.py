"""Synthetic days at scale: clustered embeddings with planted exact and near copies.

A day is `mean + basis.T @ (centre[cluster] + SPREAD * v) + NOISE * e`: clusters in a
`LATENT`-dimensional subspace of the embedding space (as pooled CNN features vary along far fewer
directions than they have), row variation inside the subspace, and small isotropic noise. Day D
is written as real embeddings shards (float16 vectors); an earlier day of the lookback as only the
products a later day's analysis reads (`pca.npz`, `neighbours.faiss`, `neighbours-ids.parquet`,
`_SUCCESS`): its first `SAMPLE_ROWS` rows are full vectors (its PCA is fitted on them, and day D
copies some) projected exactly, and the other rows are drawn on the PCA axes
same distribution (isotropic noise projected on orthonormal axes stays isotropic) without 2048-d
copies on disk. Others reuse it: `Space`, `day_vectors`, `write_day`, `write_lookback_day`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beam_jobs.image_embeddings.contract import (
    FINGERPRINT_KEY,
    NEIGHBOURS_IDS_NAME,
    NEIGHBOURS_INDEX_NAME,
    PCA_NAME,
    SUCCESS_MARKER,
    embeddings_schema,
)
from beam_jobs.image_embeddings.search.index import (
    add_rows,
    empty_index,
    training_rows,
    write_index,
)

DIM = 2048
LATENT = 64
CLUSTERS = 1000
SPREAD = 0.8
NOISE = 0.1
# A near copy: the original plus this much isotropic noise (centred cosine about 0.999).
NEAR_NOISE = 0.01
CHUNK_ROWS = 10_000
SAMPLE_ROWS = 4096
COMPONENTS = 50
FINGERPRINT = "5ca1e5ca1e5ca1e5"
MODEL = "synthetic"


@dataclass(frozen=True)
class Space:
    """What every day of one synthetic history shares: the mean, the latent basis, the clusters."""

    mean: np.ndarray
    basis: np.ndarray
    centres: np.ndarray

    @classmethod
    def make(cls, seed: int = 0, dim: int = DIM, clusters: int = CLUSTERS) -> Space:
        rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, LATENT)))
        return cls(
            mean=np.abs(rng.normal(1.0, 0.5, dim)).astype(np.float32),
            basis=basis.T.astype(np.float32),
            centres=rng.standard_normal((clusters, LATENT)).astype(np.float32),
        )

    def latent(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        clusters = rng.integers(len(self.centres), size=rows)
        variation = rng.standard_normal((rows, LATENT), dtype=np.float32)
        return self.centres[clusters] + SPREAD * variation

    def vectors(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        noise = rng.standard_normal((rows, len(self.mean)), dtype=np.float32)
        return self.mean + self.latent(rng, rows) @ self.basis + NOISE * noise


def day_vectors(space: Space, seed: int, start: int, rows: int) -> np.ndarray:
    """Rows `start` to `start + rows` of the day drawn with `seed`; the same `start` and `rows`
    always give the same rows (an earlier day's first `SAMPLE_ROWS` are one such draw)."""
    return space.vectors(np.random.default_rng([seed, start]), rows)


def image_uri(day: str, row: int) -> str:
    return f"gs://synthetic/{day}/img-{row:07d}.jpg"


def digest(day: str, row: int) -> str:
    return hashlib.sha256(f"{day}/{row}".encode()).hexdigest()


def write_marker(folder: Path, rows: int, dim: int) -> None:
    marker = {
        "images": rows,
        "embedded": rows,
        "failed": 0,
        "model": MODEL,
        "dim": dim,
        FINGERPRINT_KEY: FINGERPRINT,
        "synthetic": True,
    }
    (folder / SUCCESS_MARKER).write_text(json.dumps(marker) + "\n")


@dataclass(frozen=True)
class Plant:
    """Row `row` of day D is a copy (`exact`: same bytes; `near`: re-encoded) of `source` row of
    `day` (D itself or an earlier one)."""

    row: int
    day: str
    source: int
    kind: str


def plants(day: str, earlier: list[str], per_day: int) -> list[Plant]:
    """Per earlier day `per_day` exact and `per_day` near copies of its first rows, and as many of
    each within D: D's first rows are the copies; within D, of its rows after them."""
    planted, row = [], 0
    for other in [*earlier, day]:
        for number in range(2 * per_day):
            kind = "exact" if number < per_day else "near"
            source = number if other != day else (2 * per_day * (len(earlier) + 1)) + number
            planted.append(Plant(row, other, source, kind))
            row += 1
    return planted


def write_day(
    folder: Path, space: Space, day: str, seed: int, rows: int, planted: list[Plant], seeds
) -> None:
    """Day D's embeddings shards (float16 vectors, sha256) and `_SUCCESS`, with `planted` copies.

    `seeds` maps each earlier day to the seed it was drawn with.
    """
    folder.mkdir(parents=True, exist_ok=True)
    schema = embeddings_schema(len(space.mean), "float16", FINGERPRINT)
    shards = -(-rows // CHUNK_ROWS)
    # Re-encoding noise: its own stream, so the rows drawn are those of any other size of D.
    noise = np.random.default_rng([seed, 2**32 - 1])
    for shard, start in enumerate(range(0, rows, CHUNK_ROWS)):
        count = min(CHUNK_ROWS, rows - start)
        vectors = day_vectors(space, seed, start, count)
        digests = [digest(day, row) for row in range(start, start + count)]
        if start == 0:
            sources = {other: day_vectors(space, seeds[other], 0, SAMPLE_ROWS) for other in seeds}
            for plant in planted:
                original = vectors if plant.day == day else sources[plant.day]
                vectors[plant.row] = original[plant.source]
                if plant.kind == "exact":
                    digests[plant.row] = digest(plant.day, plant.source)
                else:
                    vectors[plant.row] += NEAR_NOISE * noise.standard_normal(len(space.mean))
        write_shard(
            folder / f"embeddings-{shard:05d}-of-{shards:05d}.parquet",
            schema,
            day,
            start,
            vectors,
            digests,
        )
    write_marker(folder, rows, len(space.mean))


def write_shard(path: Path, schema: pa.Schema, day: str, start: int, vectors, digests) -> None:
    rows, dim = vectors.shape
    flat = pa.array(vectors.astype(np.float16).ravel(), pa.float16())
    columns = {
        "uri": pa.array([image_uri(day, row) for row in range(start, start + rows)]),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        "sha256": pa.array(digests),
    }
    arrays = [
        columns[field.name] if field.name in columns else pa.nulls(rows, field.type)
        for field in schema
    ]
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)


def write_lookback_day(folder: Path, space: Space, day: str, seed: int, rows: int) -> None:
    """An earlier day as the products the lookback reads: PCA, index, id map, `_SUCCESS`."""
    from sklearn.decomposition import PCA

    from beam_jobs.image_embeddings.analysis.reduction import axes_of, save_pca

    folder.mkdir(parents=True, exist_ok=True)
    sample = day_vectors(space, seed, 0, min(SAMPLE_ROWS, rows))
    # Randomized: the rows vary along LATENT directions, which it finds in seconds where the
    # reduce step's exact solver spends about a minute on the 2048 x 2048 eigenproblem here.
    pca = PCA(COMPONENTS, svd_solver="randomized", random_state=seed).fit(sample)
    save_pca(pca, len(sample), str(folder / PCA_NAME))
    axes = axes_of(pca)
    # Rows past the sample, on the axes: the mean's and the latent part's coordinates, and the
    # isotropic noise's, which stays isotropic on orthonormal axes.
    offset = (space.mean - axes.mean) @ axes.components.T
    on_axes = space.basis @ axes.components.T

    def chunks():
        yield axes.project(sample)
        for start in range(len(sample), rows, CHUNK_ROWS):
            count = min(CHUNK_ROWS, rows - start)
            rng = np.random.default_rng([seed, start])
            noise = rng.standard_normal((count, COMPONENTS), dtype=np.float32)
            yield offset + space.latent(rng, count) @ on_axes + NOISE * noise

    training, wanted = [], training_rows(rows)
    for chunk in chunks():
        if sum(map(len, training)) >= wanted:
            break
        training.append(chunk)
    index = empty_index(COMPONENTS, rows, np.concatenate(training)[:wanted] if wanted else None)
    del training
    for chunk in chunks():
        add_rows(index, chunk)
    with open(folder / NEIGHBOURS_INDEX_NAME, "wb") as handle:
        write_index(index, handle)
    ids = pa.schema([("uri", pa.string()), ("sha256", pa.string())])
    with pq.ParquetWriter(folder / NEIGHBOURS_IDS_NAME, ids) as writer:
        for start in range(0, rows, CHUNK_ROWS):
            numbers = range(start, min(rows, start + CHUNK_ROWS))
            writer.write_batch(
                pa.record_batch(
                    [
                        pa.array([image_uri(day, row) for row in numbers]),
                        pa.array([digest(day, row) for row in numbers]),
                    ],
                    schema=ids,
                )
            )
    write_marker(folder, rows, len(space.mean))

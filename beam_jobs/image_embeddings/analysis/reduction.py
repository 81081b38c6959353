"""Reduce a day's embeddings with PCA: fit on a uniform sample, project all, plot PC1 vs PC2."""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from beam_jobs.image_embeddings.contract import (
    EMBEDDINGS_PREFIX,
    PCA_NAME,
    PLOT_NAME,
    PROJECTION_NAME,
    SAMPLE_NAME,
    join,
    shard_glob,
)
from beam_jobs.image_embeddings.pca import PcaAxes
from beam_jobs.image_embeddings.storage import files as storage

if TYPE_CHECKING:
    from sklearn.decomposition import PCA

log = logging.getLogger(__name__)

BATCH_ROWS = 2048
PLOT_POINTS = 5000
SAMPLE_ROWS = 2000


@dataclass(frozen=True)
class ReductionResult:
    """Where the reduction's outputs are, and what the PCA kept."""

    projection_uri: str
    pca_uri: str
    plot_uri: str
    rows: int
    sample_size: int
    n_components: int
    explained_variance_ratio: tuple[float, ...]


def projection_schema(n_components: int) -> pa.Schema:
    """`projection.parquet`: the image's URI, then one float32 column per component."""
    return pa.schema(
        [("uri", pa.string())] + [(f"pc{i + 1}", pa.float32()) for i in range(n_components)]
    )


def vector_batches(shards: list[str]) -> Iterator[tuple[list[str], np.ndarray]]:
    """(URIs, float32 matrix) for every `BATCH_ROWS` embeddings, shard by shard."""
    for shard in shards:
        for batch in storage.parquet_batches(shard, ["uri", "embedding"], BATCH_ROWS):
            if batch.num_rows:
                yield batch.column("uri").to_pylist(), _matrix(batch.column("embedding"), shard)


def _matrix(embeddings: pa.Array, shard: str) -> np.ndarray:
    """A batch's embeddings as a (rows, dim) float32 matrix; refuses ragged or missing rows."""
    lengths = pc.list_value_length(embeddings)
    low, high = pc.min_max(lengths).values()
    if embeddings.null_count or low.as_py() != high.as_py():
        raise ValueError(
            f"{posixpath.basename(shard)} holds missing or unequal-length embeddings: "
            "validate the outputs before reducing them"
        )
    values = embeddings.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(len(embeddings), -1)


def sample_rows(shards: list[str], picks: np.ndarray) -> np.ndarray:
    """The embeddings at sorted global row numbers `picks`, in one streaming pass."""
    sample: np.ndarray | None = None
    first = filled = 0
    for _, matrix in vector_batches(shards):
        end = np.searchsorted(picks, first + len(matrix))
        if sample is None:
            sample = np.empty((len(picks), matrix.shape[1]), dtype=np.float32)
        sample[filled:end] = matrix[picks[filled:end] - first]
        filled, first = end, first + len(matrix)
    return sample


def fit_pca(sample: np.ndarray, n_components: int) -> PCA:
    """scikit-learn's PCA of `n_components` axes fitted on the sample's rows.

    Its sign convention (each axis's largest coordinate positive) makes the same data always give
    the same projection.
    """
    from sklearn.decomposition import PCA

    # The covariance's eigenvectors need no copy of the sample and are exact, and a dim x dim
    # eigenproblem costs the same for any row count; with fewer rows than dimensions, the thin
    # SVD of the (copied) sample is the cheaper exact fit. The randomized solver is not exact:
    # on flat spectra like pooled CNN features it misses variances by several percent.
    solver = "full" if len(sample) < sample.shape[1] else "covariance_eigh"
    return PCA(n_components, svd_solver=solver).fit(sample)


def capped_components(requested: int, sample_rows: int, dim: int) -> int:
    """A PCA has at most min(rows, dim) axes; say so when the request asks for more."""
    cap = min(sample_rows, dim)
    if requested > cap:
        log.info(
            "Keeping %d principal components instead of %d: the sample has %d rows of %d dims",
            cap,
            requested,
            sample_rows,
            dim,
        )
    return min(requested, cap)


def axes_of(pca: PCA) -> PcaAxes:
    """The axes of a fitted scikit-learn PCA, float32 as `pca.npz` stores them."""
    return PcaAxes(pca.components_.astype(np.float32), pca.mean_.astype(np.float32))


def write_projection(shards: list[str], axes: PcaAxes, uri: str) -> int:
    """Project every embedding in a streaming pass into `uri`; return the row count."""
    schema = projection_schema(len(axes.components))
    rows = 0
    with storage.open_file(uri, "wb") as handle, pq.ParquetWriter(handle, schema) as writer:
        for uris, matrix in vector_batches(shards):
            coordinates = axes.project(matrix)
            columns = [pa.array(uris, pa.string())] + [
                pa.array(coordinates[:, i]) for i in range(coordinates.shape[1])
            ]
            writer.write_batch(pa.record_batch(columns, schema=schema))
            rows += len(uris)
    return rows


def save_pca(pca: PCA, sample_size: int, uri: str) -> None:
    """`pca.npz`: plain arrays only, so `np.load(..., allow_pickle=False)` reads it."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        components=pca.components_.astype(np.float32),
        mean=pca.mean_.astype(np.float32),
        explained_variance=pca.explained_variance_.astype(np.float64),
        explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float64),
        sample_size=np.int64(sample_size),
    )
    storage.write_bytes(uri, buffer.getvalue())


def load_pca(uri: str) -> PcaAxes:
    """The axes of a PCA saved by `save_pca`."""
    return PcaAxes.from_npz(storage.read_bytes(uri))


def save_sample(sample: np.ndarray, uri: str) -> None:
    """`embedding-sample.npy`: float32 rows (float16 flushes the tiny values of some models' random
    initialisations to zero), enough for another day's drift reference."""
    buffer = io.BytesIO()
    np.save(buffer, sample.astype(np.float32), allow_pickle=False)
    storage.write_bytes(uri, buffer.getvalue())


def load_sample(uri: str) -> np.ndarray:
    """The rows saved by `save_sample`, float32."""
    return np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False).astype(np.float32)


def plot_projection(points: np.ndarray, ratio: np.ndarray, title: str, uri: str) -> None:
    """A PNG scatter of the first two coordinates of `points`, variance shares on the axes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 6), dpi=110, layout="constrained")
    axes = figure.subplots()
    second = points[:, 1] if points.shape[1] > 1 else np.zeros(len(points))
    axes.scatter(points[:, 0], second, s=6, alpha=0.5, linewidths=0)
    axes.set_xlabel(f"PC1 ({ratio[0]:.1%} of variance)")
    axes.set_ylabel(f"PC2 ({ratio[1]:.1%} of variance)" if len(ratio) > 1 else "PC2 (not kept)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    storage.write_bytes(uri, buffer.getvalue())


def reduce_dimensions(
    output_dir: str, n_components: int = 50, sample_size: int = 20000, seed: int = 0
) -> ReductionResult:
    """PCA of a day's embeddings: `projection.parquet`, `pca.npz` and `projection.png`.

    Memory is bounded whatever the day's size: the sample (`sample_size` rows) plus one batch of
    `BATCH_ROWS` embeddings at a time; the shards are read twice (sample, then projection).
    """
    output_dir = storage.absolute(output_dir)
    wanted = ((n_components, "number of PCA components"), (sample_size, "PCA sample size"))
    for value, what in wanted:
        if value < 1:
            raise ValueError(f"the {what} must be a positive whole number, got {value}")
    shards = storage.glob(shard_glob(output_dir, EMBEDDINGS_PREFIX))
    total = sum(storage.parquet_rows(shard) for shard in shards)
    if total < 2:
        raise ValueError(f"a PCA needs at least 2 embeddings; {output_dir} holds {total}")
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(total, size=min(sample_size, total), replace=False))
    sample = sample_rows(shards, picks)
    kept = capped_components(n_components, len(sample), sample.shape[1])
    pca = fit_pca(sample, kept)
    axes = axes_of(pca)
    names = (PROJECTION_NAME, PCA_NAME, PLOT_NAME, SAMPLE_NAME)
    uris = {name: join(output_dir, name) for name in names}
    rows = write_projection(shards, axes, uris[PROJECTION_NAME])
    save_pca(pca, len(sample), uris[PCA_NAME])
    kept_rows = rng.choice(len(sample), size=min(SAMPLE_ROWS, len(sample)), replace=False)
    save_sample(sample[np.sort(kept_rows)], uris[SAMPLE_NAME])
    shown = sample[rng.choice(len(sample), size=min(PLOT_POINTS, len(sample)), replace=False)]
    title = (
        f"{posixpath.basename(output_dir)}: {rows} embeddings, {len(shown)} shown, "
        f"PCA fitted on {len(sample)}"
    )
    ratio = pca.explained_variance_ratio_
    plot_projection(axes.project(shown), ratio, title, uris[PLOT_NAME])
    log.info("Reduced %d embeddings to %d components in %s", rows, kept, output_dir)
    return ReductionResult(
        projection_uri=uris[PROJECTION_NAME],
        pca_uri=uris[PCA_NAME],
        plot_uri=uris[PLOT_NAME],
        rows=rows,
        sample_size=len(sample),
        n_components=kept,
        explained_variance_ratio=tuple(float(r) for r in ratio),
    )

"""PCA reduction on synthetic clustered embeddings: separation, row counts, files readable."""

from __future__ import annotations

import io
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from beam_jobs.image_embeddings.analysis.reduction import (
    ReductionResult,
    axes_of,
    capped_components,
    fit_pca,
    reduce_dimensions,
    sample_rows,
)
from beam_jobs.image_embeddings.contract import embeddings_schema
from beam_jobs.image_embeddings.storage import files as storage
from tests.plugins.dag.test_validation import write_outputs, write_table

DIM = 2048


def clustered(rows_per_cluster: int, clusters: int = 3, seed: int = 1) -> np.ndarray:
    """Gaussian clusters in 2048-d, non-negative like pooled ResNet features."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 2, size=(clusters, DIM))
    vectors = [
        np.abs(centre + rng.normal(scale=0.3, size=(rows_per_cluster, DIM))) for centre in centres
    ]
    return np.concatenate(vectors).astype(np.float32)


def read_projection(uri: str):
    with storage.open_file(uri, "rb") as handle:
        return pq.read_table(handle)


def test_first_components_separate_the_clusters(day):
    vectors = clustered(100)
    uris = write_outputs(day, vectors, shards=3)

    result = reduce_dimensions(day, n_components=10, sample_size=150, seed=0)

    assert result == ReductionResult(
        projection_uri=f"{day}/projection.parquet",
        pca_uri=f"{day}/pca.npz",
        plot_uri=f"{day}/projection.png",
        rows=300,
        sample_size=150,
        n_components=10,
        explained_variance_ratio=result.explained_variance_ratio,
    )
    table = read_projection(result.projection_uri)
    assert table.column_names == ["uri"] + [f"pc{i}" for i in range(1, 11)]
    assert table.num_rows == 300 and sorted(table["uri"].to_pylist()) == uris
    cluster = {uri: index // 100 for index, uri in enumerate(uris)}
    labels = np.array([cluster[uri] for uri in table["uri"].to_pylist()])
    points = np.column_stack([table["pc1"].to_numpy(), table["pc2"].to_numpy()])
    centres = np.array([points[labels == k].mean(axis=0) for k in range(3)])
    spread = max(points[labels == k].std(axis=0).max() for k in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > 10 * spread
    ratio = result.explained_variance_ratio
    assert ratio[0] + ratio[1] > 0.5 and list(ratio) == sorted(ratio, reverse=True)


def test_npz_loads_without_pickle_and_reproduces_projection(tmp_path):
    day = str(tmp_path / "2026-11-28")
    vectors = clustered(40)
    uris = write_outputs(day, vectors)

    result = reduce_dimensions(day, n_components=5, sample_size=1000)

    with np.load(result.pca_uri, allow_pickle=False) as saved:
        components, mean = saved["components"], saved["mean"]
        assert components.shape == (5, DIM) and mean.shape == (DIM,)
        assert saved["explained_variance"].shape == saved["explained_variance_ratio"].shape == (5,)
        assert (components.dtype, mean.dtype) == (np.float32, np.float32)
        assert saved["explained_variance"].dtype == np.float64
        assert int(saved["sample_size"]) == 120
    assert np.allclose(components @ components.T, np.eye(5), atol=1e-4)
    table = read_projection(result.projection_uri)
    row = table["uri"].to_pylist().index(uris[7])
    expected = (vectors[7] - mean) @ components.T
    got = [table[f"pc{i}"][row].as_py() for i in range(1, 6)]
    assert np.allclose(got, expected, rtol=1e-3, atol=1e-2)


def test_plot_is_a_valid_png(tmp_path):
    day = str(tmp_path / "2026-11-28")
    write_outputs(day, clustered(30))

    result = reduce_dimensions(day, n_components=3, sample_size=50)

    with Image.open(io.BytesIO(storage.read_bytes(result.plot_uri))) as image:
        image.verify()
        assert image.format == "PNG"
        assert image.size[0] > 400 and image.size[1] > 400


def test_components_are_capped_by_the_sample(tmp_path, caplog):
    day = str(tmp_path / "2026-11-28")
    write_outputs(day, clustered(4))

    with caplog.at_level(logging.INFO, logger="beam_jobs.image_embeddings.analysis.reduction"):
        result = reduce_dimensions(day, n_components=50, sample_size=8)

    assert (result.sample_size, result.n_components, result.rows) == (8, 8, 12)
    assert "Keeping 8 principal components instead of 50" in caplog.text
    assert read_projection(result.projection_uri).num_columns == 1 + 8


def test_same_seed_same_outputs(tmp_path):
    day = str(tmp_path / "2026-11-28")
    write_outputs(day, clustered(50))

    first = reduce_dimensions(day, n_components=4, sample_size=60, seed=3)
    table = read_projection(first.projection_uri)
    second = reduce_dimensions(day, n_components=4, sample_size=60, seed=3)

    assert first == second
    assert read_projection(second.projection_uri).equals(table)


def test_empty_shards_are_harmless(tmp_path):
    day = str(tmp_path / "day")
    write_outputs(day, clustered(5), shards=2)
    write_table(f"{day}/embeddings-00002-of-00003.parquet", [], embeddings_schema())

    assert reduce_dimensions(day, n_components=2, sample_size=100).rows == 15


def test_sample_rows_picks_exact_rows(tmp_path):
    day = str(tmp_path / "day")
    vectors = clustered(10)
    write_outputs(day, vectors, shards=1)
    picks = np.array([0, 7, 29])

    sample = sample_rows(storage.glob(f"{day}/embeddings-*.parquet"), picks)

    assert np.array_equal(sample, vectors[picks])


@pytest.mark.parametrize("rows", [40, 200])
def test_fit_pca_finds_the_axes_of_greatest_variance(rows):
    rng = np.random.default_rng(5)
    scales = 10 * 0.7 ** np.arange(64)
    basis, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    sample = (rng.normal(size=(rows, 64)) * scales @ basis.T + 3).astype(np.float32)

    pca = fit_pca(sample, 6)

    projected = axes_of(pca).project(sample)
    components = pca.components_
    assert projected.dtype == np.float32 and projected.shape == (rows, 6)
    assert np.allclose(components @ components.T, np.eye(6), atol=1e-5)
    assert np.allclose(projected.var(axis=0, ddof=1), pca.explained_variance_, rtol=1e-3)
    assert np.allclose(pca.mean_, sample.mean(axis=0), atol=1e-5)
    total = sample.var(axis=0, ddof=1).sum()
    assert np.allclose(pca.explained_variance_ratio_, pca.explained_variance_ / total, rtol=1e-3)
    assert np.abs(components[0] @ basis[:, 0]) > 0.9
    assert (components[np.arange(6), np.abs(components).argmax(axis=1)] > 0).all()
    assert np.allclose(projected, pca.transform(sample), atol=1e-3)


def test_capped_components():
    assert capped_components(50, 20000, 2048) == 50
    assert capped_components(50, 10, 2048) == 10
    assert capped_components(50, 20000, 16) == 16


def test_refuses_too_few_embeddings_and_bad_arguments(tmp_path):
    day = str(tmp_path / "day")
    write_outputs(day, clustered(1, clusters=1))

    with pytest.raises(ValueError, match="a PCA needs at least 2 embeddings; .* holds 1"):
        reduce_dimensions(day)
    with pytest.raises(ValueError, match="number of PCA components must be a positive"):
        reduce_dimensions(day, n_components=0)
    with pytest.raises(ValueError, match="PCA sample size must be a positive"):
        reduce_dimensions(day, sample_size=-5)

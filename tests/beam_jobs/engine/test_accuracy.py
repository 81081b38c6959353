"""The int8 accuracy guard's figures and its verdict."""

from __future__ import annotations

import numpy as np
import pytest

from beam_jobs.image_embeddings.engine.accuracy import (
    AccuracyRefused,
    Thresholds,
    accuracy_figures,
    centred_cosines,
    check_accuracy,
    nearest_neighbours,
    neighbour_overlap,
)


def embeddings(count: int = 20, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Vectors with a large shared component, as CNN embeddings have."""
    rng = np.random.default_rng(seed)
    return (5.0 + rng.normal(size=(count, dim))).astype(np.float32)


def test_identical_embeddings_score_one():
    reference = embeddings()
    assert accuracy_figures(reference, reference.copy()) == {
        "images": 20,
        "centred_cosine_mean": 1.0,
        "centred_cosine_min": 1.0,
        "top5_overlap": 1.0,
    }


def test_centring_removes_the_shared_component():
    reference = embeddings()
    shuffled = reference[::-1].copy()
    plain = np.sum(reference * shuffled, axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(shuffled, axis=1)
    )
    assert plain.min() > 0.9
    assert centred_cosines(reference, shuffled).mean() < 0.5


def test_neighbours_exclude_the_image_itself():
    found = nearest_neighbours(embeddings(count=8))
    assert found.shape == (8, 5)
    assert all(index not in row for index, row in enumerate(found))


def test_noise_lowers_every_figure():
    reference = embeddings()
    noisy = reference + np.random.default_rng(1).normal(scale=0.8, size=reference.shape)
    figures = accuracy_figures(reference, noisy.astype(np.float32))
    assert figures["centred_cosine_min"] < figures["centred_cosine_mean"] < 0.99
    assert figures["top5_overlap"] < 1.0


def test_neighbour_overlap_needs_more_images_than_neighbours():
    with pytest.raises(ValueError, match="more than 5 images"):
        neighbour_overlap(embeddings(count=5), embeddings(count=5))


def test_a_model_below_any_threshold_is_refused_with_all_figures():
    figures = {
        "images": 32,
        "centred_cosine_mean": 0.995,
        "centred_cosine_min": 0.96,
        "top5_overlap": 0.95,
    }
    with pytest.raises(AccuracyRefused) as refused:
        check_accuracy(figures, Thresholds())
    message = str(refused.value)
    assert "centred cosine min 0.9600 < 0.97" in message
    assert "0.995" in message and "0.95" in message and "32 held-out images" in message
    assert "mean" not in message.split("(figures")[0]


def test_a_model_at_the_thresholds_passes():
    check_accuracy(
        {"images": 6, "centred_cosine_mean": 0.99, "centred_cosine_min": 0.97, "top5_overlap": 0.9},
        Thresholds(),
    )

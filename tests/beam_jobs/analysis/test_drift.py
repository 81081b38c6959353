"""Drift of a day against earlier days of the same fingerprint, on synthetic feature vectors.

Synthetic vectors, because the statistics are the point: reference days and a "same imagery" day
are drawn from one distribution, a "different imagery" day from one whose features differ.
"""

from __future__ import annotations

import numpy as np
import pytest

from beam_jobs.image_embeddings.analysis.drift import (
    MIN_IMAGES,
    Gaussian,
    drift_figures,
    frechet_distance,
    measure_drift,
    verdict,
)
from beam_jobs.image_embeddings.analysis.reduction import reduce_dimensions
from beam_jobs.image_embeddings.contract import DRIFT_NAME, DRIFTED, NO_HISTORY, STABLE, TOO_FEW
from beam_jobs.image_embeddings.storage import files as storage
from tests.beam_jobs.analysis.test_duplicates import DIM, FINGERPRINT, digests_of, write_day

THRESHOLD = 0.2
REFERENCE_DAYS = ("2026-11-25", "2026-11-26", "2026-11-27")


# Image features vary along a few directions (what the images show) plus a little noise.
FACTORS = 6
LOADINGS = np.random.default_rng(100).normal(scale=0.4, size=(FACTORS, DIM))


def imagery(rows: int, seed: int, centre: np.ndarray | float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(rows, FACTORS)) @ LOADINGS
    return np.abs(centre + factors + rng.normal(scale=0.1, size=(rows, DIM))).astype(np.float32)


def different_imagery(rows: int, seed: int) -> np.ndarray:
    """Features of other content: a third of the channels fire more, another third less."""
    centre = np.ones(DIM)
    centre[: DIM // 3] = 1.8
    centre[DIM // 3 : 2 * DIM // 3] = 0.4
    return imagery(rows, seed, centre)


def prepared_day(root: str, day: str, vectors: np.ndarray, fingerprint: str = FINGERPRINT) -> str:
    write_day(root, day, vectors, digests_of(day, len(vectors)), fingerprint)
    reduce_dimensions(f"{root}/{day}", n_components=8, sample_size=1000)
    return f"{root}/{day}"


def write_history(root: str) -> str:
    """Three reference days of one imagery, and an older day under another fingerprint."""
    for seed, day in enumerate(REFERENCE_DAYS):
        prepared_day(root, day, imagery(300, seed=seed))
    prepared_day(root, "2026-11-24", different_imagery(300, seed=7), fingerprint="0" * 16)
    return root


@pytest.fixture
def history(tmp_path) -> str:
    return write_history(str(tmp_path / "embeddings"))


def test_same_imagery_is_stable_and_different_imagery_drifts(history):
    same = prepared_day(history, "2026-11-28", imagery(300, seed=11))
    report = measure_drift(same, "2026-11-28", FINGERPRINT, 7, THRESHOLD)

    assert report["verdict"] == STABLE
    assert report["reference_days"] == list(reversed(REFERENCE_DAYS))
    assert "0000000000000000" in report["days_skipped"]["2026-11-24"]
    assert report["figures"]["reference_images"] == 900
    assert report["figures"]["relative_frechet"] < THRESHOLD / 2
    assert report["figures"]["far_share"] < 0.05
    assert storage.read_json(f"{same}/{DRIFT_NAME}") == report

    other = prepared_day(history, "2026-11-29", different_imagery(300, seed=12))
    drifted = measure_drift(other, "2026-11-29", FINGERPRINT, 7, THRESHOLD)

    assert drifted["verdict"] == DRIFTED
    figures = drifted["figures"]
    assert figures["relative_frechet"] > THRESHOLD
    assert figures["far_share"] > 0.5
    assert figures["centroid_shift"] > 5 * report["figures"]["centroid_shift"]


def test_small_days_same_imagery_is_stable_and_other_imagery_drifts(history):
    same = prepared_day(history, "2026-11-28", imagery(MIN_IMAGES, seed=11))
    report = measure_drift(same, "2026-11-28", FINGERPRINT, 7, THRESHOLD)

    assert report["verdict"] == STABLE
    # Ten images: the figure is beyond the configured threshold, within sampling noise.
    assert report["figures"]["relative_frechet"] > THRESHOLD
    assert report["effective_threshold"] == report["figures"]["noise_threshold"] > THRESHOLD

    other = prepared_day(history, "2026-11-29", different_imagery(30, seed=12))
    assert measure_drift(other, "2026-11-29", FINGERPRINT, 7, THRESHOLD)["verdict"] == DRIFTED


def test_a_day_of_fewer_images_than_the_minimum_gets_no_score(history):
    tiny = prepared_day(history, "2026-11-28", imagery(MIN_IMAGES - 1, seed=11))

    report = measure_drift(tiny, "2026-11-28", FINGERPRINT, 7, THRESHOLD)

    assert report["verdict"] == TOO_FEW and report["figures"] is None
    assert f"has {MIN_IMAGES - 1} images" in report["reason"]
    assert storage.read_json(f"{tiny}/{DRIFT_NAME}") == report


# Seeded trials in a low-dimensional space, as the drift figures are computed (PCA coordinates).
SPACE = 8
SPACE_LOADINGS = np.random.default_rng(200).normal(scale=0.6, size=(3, SPACE))
REFERENCE = 3000


def coordinates(rows: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centre = np.zeros(SPACE)
    centre[:3] = shift
    return centre + rng.normal(size=(rows, 3)) @ SPACE_LOADINGS + rng.normal(0, 0.3, (rows, SPACE))


@pytest.mark.parametrize("size", [10, 30, 100, 1000])
def test_same_imagery_is_stable_in_95_of_100_trials_and_other_imagery_drifts(size):
    reference = coordinates(REFERENCE, seed=10**6)

    stable = [
        verdict(drift_figures(coordinates(size, seed), reference), THRESHOLD) for seed in range(100)
    ]
    drifted = [
        verdict(drift_figures(coordinates(size, seed, shift=1.5), reference), THRESHOLD)
        for seed in range(100, 120)
    ]

    assert stable.count(STABLE) >= 95
    assert drifted.count(DRIFTED) == 20


def test_reference_window_is_bounded(history):
    same = prepared_day(history, "2026-11-28", imagery(300, seed=11))

    report = measure_drift(same, "2026-11-28", FINGERPRINT, 1, THRESHOLD)

    assert report["reference_days"] == ["2026-11-27"]
    assert report["figures"]["reference_images"] == 300


def test_no_comparable_history_gives_no_score(tmp_path):
    root = str(tmp_path / "embeddings")
    prepared_day(root, "2026-11-27", imagery(100, seed=1), fingerprint="1" * 16)
    first = prepared_day(root, "2026-11-28", imagery(100, seed=2))

    report = measure_drift(first, "2026-11-28", FINGERPRINT, 7, THRESHOLD)

    assert report["verdict"] == NO_HISTORY and report["figures"] is None
    assert report["reference_days"] == []
    assert "no drift score" in report["reason"]


def test_frechet_distance_of_known_gaussians():
    first = Gaussian(np.zeros(2), np.eye(2))
    second = Gaussian(np.array([3.0, 4.0]), 4 * np.eye(2))
    # |m1 - m2|^2 = 25; tr(I + 4I - 2 * 2I) = 2.
    assert frechet_distance(first, second) == pytest.approx(27.0)
    assert frechet_distance(first, first) == pytest.approx(0.0, abs=1e-9)

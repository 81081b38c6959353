"""Drift of day D against its comparable previous days, in a PCA space of both: `drift.json`.

D is its `embedding-sample.npy` (a uniform sample of its embeddings, written by the reduce step);
the reference is the union of the previous days' samples. Both are projected on a PCA fitted to
all of them together, with as many components as D's own PCA: D's PCA alone would hide a shift
along directions in which D itself hardly varies. Figures:
- `centroid_shift`: distance between the two centroids, over the reference's RMS spread;
- `frechet_distance`: the Fréchet distance of two Gaussians fitted to the two sets, and
  `relative_frechet`, the same over the reference's total variance (the verdict's figure);
- `far_share`: the share of D's (sampled) images farther (Mahalanobis) from the reference
  centroid than `FAR_QUANTILE` of the reference's own images: about 1 - FAR_QUANTILE when
  nothing changed;
- `noise_threshold`: what sampling noise alone gives. The relative Fréchet figure of a few images
  is large even when nothing changed (about 1 at 10 images), so D's images and the reference's are
  shuffled together `PERMUTATIONS` times, split again at D's size, and the `NULL_QUANTILE` of
  those figures is the noise threshold. A day drifts when its figure exceeds both the configured
  threshold and the noise threshold (`effective_threshold`); below `MIN_IMAGES` images the
  verdict is "too few images".

Memory is bounded whatever the days' sizes: every figure comes from the days' stored samples
(`embedding-sample.npy`, at most `reduction.SAMPLE_ROWS` rows each).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from beam_jobs.image_embeddings.analysis.history import comparable_days
from beam_jobs.image_embeddings.analysis.reduction import (
    axes_of,
    capped_components,
    fit_pca,
    load_pca,
    load_sample,
)
from beam_jobs.image_embeddings.contract import (
    DRIFT_NAME,
    DRIFTED,
    NO_HISTORY,
    PCA_NAME,
    SAMPLE_NAME,
    STABLE,
    TOO_FEW,
    join,
)
from beam_jobs.image_embeddings.storage import files as storage

log = logging.getLogger(__name__)

FAR_QUANTILE = 0.99
# Added to the reference covariance's diagonal, relative to its mean variance, so that a
# rank-deficient reference (fewer images than components) still has a Mahalanobis distance.
RIDGE = 1e-6
# Fewer images than this tell nothing about a distribution, whatever the threshold.
MIN_IMAGES = 10
# The permutation null: its seed is fixed so that the same outputs always get the same verdict.
PERMUTATIONS = 200
NULL_QUANTILE = 0.99
NULL_SEED = 0
# Permuted splits whose statistics are computed at once (a block of rows x day size x components).
PERMUTATION_BLOCK = 20


@dataclass(frozen=True)
class Gaussian:
    """Mean and covariance of a set of points."""

    mean: np.ndarray
    covariance: np.ndarray

    @classmethod
    def fit(cls, points: np.ndarray) -> Gaussian:
        points = np.asarray(points, dtype=np.float64)
        return cls(points.mean(axis=0), np.atleast_2d(np.cov(points, rowvar=False)))


def frechet_distances(
    first_means: np.ndarray,
    first_covariances: np.ndarray,
    second_means: np.ndarray,
    second_covariances: np.ndarray,
) -> np.ndarray:
    """|m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^1/2) of stacked pairs of Gaussians, never below 0.

    tr (C1 C2)^1/2 is the sum of the square roots of C1 C2's eigenvalues: real and non-negative
    for covariances, up to rounding, which the clip removes.
    """
    eigenvalues = np.linalg.eigvals(first_covariances @ second_covariances).real
    root_trace = np.sqrt(np.clip(eigenvalues, 0, None)).sum(axis=-1)
    traces = np.trace(first_covariances + second_covariances, axis1=-2, axis2=-1)
    squared = np.sum((first_means - second_means) ** 2, axis=-1)
    return np.maximum(squared + traces - 2 * root_trace, 0.0)


def frechet_distance(first: Gaussian, second: Gaussian) -> float:
    """The Fréchet distance of two Gaussians (squared-distance form)."""
    return float(frechet_distances(first.mean, first.covariance, second.mean, second.covariance))


def permutation_null(day_points: np.ndarray, reference_points: np.ndarray) -> np.ndarray:
    """Relative Fréchet figures of `PERMUTATIONS` random splits of both sets at D's size.

    Each split's statistics come from the pooled sums minus the pseudo-day's, so a permutation
    costs the day's size, not the reference's.
    """
    pooled = np.concatenate([day_points, reference_points]).astype(np.float64)
    rows, size = len(pooled), len(day_points)
    total, outer = pooled.sum(axis=0), pooled.T @ pooled
    rng = np.random.default_rng(NULL_SEED)
    figures = []
    for start in range(0, PERMUTATIONS, PERMUTATION_BLOCK):
        count = min(PERMUTATION_BLOCK, PERMUTATIONS - start)
        picks = np.stack([rng.choice(rows, size=size, replace=False) for _ in range(count)])
        day = pooled[picks]
        day_sum, day_outer = day.sum(axis=1), day.transpose(0, 2, 1) @ day
        day_mean, rest_mean = day_sum / size, (total - day_sum) / (rows - size)
        day_cov = (day_outer - size * day_mean[:, :, None] * day_mean[:, None, :]) / (size - 1)
        rest_outer = outer - day_outer
        rest_cov = (rest_outer - (rows - size) * rest_mean[:, :, None] * rest_mean[:, None, :]) / (
            rows - size - 1
        )
        variance = np.trace(rest_cov, axis1=1, axis2=2)
        distance = frechet_distances(day_mean, day_cov, rest_mean, rest_cov)
        figures.append(
            np.divide(distance, variance, out=np.zeros_like(distance), where=variance > 0)
        )
    return np.concatenate(figures)


def mahalanobis_squared(points: np.ndarray, reference: Gaussian) -> np.ndarray:
    """Squared Mahalanobis distance of each row of `points` to the reference."""
    covariance = reference.covariance
    ridge = RIDGE * max(float(np.trace(covariance)) / len(covariance), np.finfo(float).tiny)
    inverse = np.linalg.pinv(covariance + ridge * np.eye(len(covariance)))
    centred = np.asarray(points, dtype=np.float64) - reference.mean
    return np.einsum("ij,jk,ik->i", centred, inverse, centred)


def drift_figures(day_points: np.ndarray, reference_points: np.ndarray) -> dict:
    """Every figure of `drift.json` for two sets of points in one space."""
    day, reference = Gaussian.fit(day_points), Gaussian.fit(reference_points)
    total_variance = float(np.trace(reference.covariance))
    distance = frechet_distance(day, reference)
    limit = np.quantile(mahalanobis_squared(reference_points, reference), FAR_QUANTILE)
    far = mahalanobis_squared(day_points, reference) > limit
    return {
        # Relative figures need a reference that varies at all; None (JSON null) otherwise.
        "centroid_shift": (
            float(np.linalg.norm(day.mean - reference.mean) / np.sqrt(total_variance))
            if total_variance > 0
            else None
        ),
        "frechet_distance": distance,
        "relative_frechet": distance / total_variance if total_variance > 0 else None,
        "far_share": float(far.mean()),
        "far_quantile": FAR_QUANTILE,
        "day_images": len(day_points),
        "reference_images": len(reference_points),
        "noise_threshold": float(
            np.quantile(permutation_null(day_points, reference_points), NULL_QUANTILE)
        ),
        "null_quantile": NULL_QUANTILE,
        "permutations": PERMUTATIONS,
    }


def effective_threshold(figures: dict, threshold: float) -> float:
    """The figure above which D drifted: the configured threshold, or sampling noise if larger."""
    return max(threshold, figures["noise_threshold"])


def verdict(figures: dict, threshold: float) -> str:
    relative = figures["relative_frechet"]
    limit = effective_threshold(figures, threshold)
    return DRIFTED if relative is not None and relative > limit else STABLE


def measure_drift(
    output_dir: str, day: str, fingerprint: str | None, reference_days: int, threshold: float
) -> dict:
    """Compare D with its comparable previous days; write and return `drift.json`'s content."""
    root = storage.parent(output_dir)
    history = comparable_days(root, day, fingerprint, reference_days, (SAMPLE_NAME,))
    sample = load_sample(join(output_dir, SAMPLE_NAME))
    report = {
        "day": day,
        "fingerprint": fingerprint,
        "verdict": NO_HISTORY,
        "threshold": threshold,
        "effective_threshold": None,
        "minimum_images": MIN_IMAGES,
        "reference_days": list(history.days),
        "days_skipped": history.skipped,
        "figures": None,
    }
    if not history.days:
        report["reason"] = (
            f"none of the {reference_days} days before {day} has embeddings under model "
            f"fingerprint {fingerprint}: no drift score without a comparable reference"
        )
    elif len(sample) < MIN_IMAGES:
        report["verdict"] = TOO_FEW
        report["reason"] = (
            f"{day} has {len(sample)} images, fewer than the {MIN_IMAGES} a drift score needs"
        )
    else:
        reference = np.concatenate(
            [load_sample(join(root, other, SAMPLE_NAME)) for other in history.days]
        )
        both = np.concatenate([sample, reference])
        wanted = len(load_pca(join(output_dir, PCA_NAME)).components)
        pca = fit_pca(both, capped_components(wanted, len(both), both.shape[1]))
        axes = axes_of(pca)
        figures = drift_figures(axes.project(sample), axes.project(reference))
        report["figures"] = figures
        report["verdict"] = verdict(figures, threshold)
        report["effective_threshold"] = effective_threshold(figures, threshold)
    storage.write_json(join(output_dir, DRIFT_NAME), report)
    return report

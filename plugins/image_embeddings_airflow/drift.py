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
  nothing changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from beam_jobs.image_embeddings.contract import DRIFT_NAME, PCA_NAME, SAMPLE_NAME, join
from image_embeddings_airflow import storage
from image_embeddings_airflow.history import comparable_days
from image_embeddings_airflow.reduction import (
    axes_of,
    capped_components,
    fit_pca,
    load_pca,
    load_sample,
)

log = logging.getLogger(__name__)

FAR_QUANTILE = 0.99
# Added to the reference covariance's diagonal, relative to its mean variance, so that a
# rank-deficient reference (fewer images than components) still has a Mahalanobis distance.
RIDGE = 1e-6
DRIFTED = "drift"
STABLE = "stable"
NO_HISTORY = "no comparable history"


@dataclass(frozen=True)
class Gaussian:
    """Mean and covariance of a set of points."""

    mean: np.ndarray
    covariance: np.ndarray

    @classmethod
    def fit(cls, points: np.ndarray) -> Gaussian:
        points = np.asarray(points, dtype=np.float64)
        return cls(points.mean(axis=0), np.atleast_2d(np.cov(points, rowvar=False)))


def frechet_distance(first: Gaussian, second: Gaussian) -> float:
    """Squared-distance form: |m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^1/2), never below 0."""
    from scipy.linalg import sqrtm

    product = sqrtm(first.covariance @ second.covariance)
    trace = np.trace(first.covariance + second.covariance - 2 * np.real(product))
    return max(float(np.sum((first.mean - second.mean) ** 2) + trace), 0.0)


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
    }


def verdict(figures: dict | None, threshold: float) -> str:
    if figures is None:
        return NO_HISTORY
    relative = figures["relative_frechet"]
    return DRIFTED if relative is not None and relative > threshold else STABLE


def measure_drift(
    output_dir: str, day: str, fingerprint: str | None, reference_days: int, threshold: float
) -> dict:
    """Compare D with its comparable previous days; write and return `drift.json`'s content."""
    root = storage.parent(output_dir)
    history = comparable_days(root, day, fingerprint, reference_days, (SAMPLE_NAME,))
    figures = None
    if history.days:
        sample = load_sample(join(output_dir, SAMPLE_NAME))
        reference = np.concatenate(
            [load_sample(join(root, other, SAMPLE_NAME)) for other in history.days]
        )
        both = np.concatenate([sample, reference])
        wanted = len(load_pca(join(output_dir, PCA_NAME)).components)
        pca = fit_pca(both, capped_components(wanted, len(both), both.shape[1]))
        axes = axes_of(pca)
        figures = drift_figures(axes.project(sample), axes.project(reference))
    report = {
        "day": day,
        "fingerprint": fingerprint,
        "verdict": verdict(figures, threshold),
        "threshold": threshold,
        "reference_days": list(history.days),
        "days_skipped": history.skipped,
        "figures": figures,
    }
    if figures is None:
        report["reason"] = (
            f"none of the {reference_days} days before {day} has embeddings under model "
            f"fingerprint {fingerprint}: no drift score without a comparable reference"
        )
    storage.write_json(join(output_dir, DRIFT_NAME), report)
    return report

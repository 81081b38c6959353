"""The int8 and bfloat16 guard: centred cosine and top-5 neighbour overlap against float32."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from beam_jobs.image_embeddings.vectors import row_cosines, unit_rows

NEIGHBOURS = 5


@dataclass(frozen=True)
class Thresholds:
    """The least an int8 or bfloat16 model must keep of its float32 original's embeddings."""

    min_centred_cosine_mean: float = 0.99
    min_centred_cosine: float = 0.97
    min_top5_overlap: float = 0.9


class AccuracyRefused(RuntimeError):
    """An int8 or bfloat16 model strays too far from float32; the message carries the figures."""


def centred_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per image, the cosine of the two embeddings after subtracting the reference's mean.

    CNN embeddings share a large common component that makes any two look alike; centring
    measures what tells images apart.
    """
    centre = reference.mean(axis=0)
    return row_cosines(reference - centre, candidate - centre)


def nearest_neighbours(embeddings: np.ndarray, count: int = NEIGHBOURS) -> np.ndarray:
    """Per row, the indices of its `count` nearest other rows by cosine."""
    unit = unit_rows(embeddings.astype(np.float64))
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :count]


def neighbour_overlap(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean fraction of each image's nearest neighbours under `reference` kept by `candidate`."""
    if len(reference) <= NEIGHBOURS:
        raise ValueError(
            f"top-{NEIGHBOURS} neighbours need more than {NEIGHBOURS} images, got {len(reference)}"
        )
    kept = [
        len(set(wanted) & set(found)) / NEIGHBOURS
        for wanted, found in zip(
            nearest_neighbours(reference), nearest_neighbours(candidate), strict=True
        )
    ]
    return float(np.mean(kept))


def accuracy_figures(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """How closely `candidate` embeddings follow `reference` ones of the same images."""
    if reference.shape != candidate.shape:
        raise ValueError(f"embeddings differ in shape: {reference.shape} and {candidate.shape}")
    cosines = centred_cosines(reference.astype(np.float64), candidate.astype(np.float64))
    return {
        "images": len(reference),
        "centred_cosine_mean": round(float(cosines.mean()), 6),
        "centred_cosine_min": round(float(cosines.min()), 6),
        "top5_overlap": round(neighbour_overlap(reference, candidate), 6),
    }


def shortfalls(figures: dict[str, Any], thresholds: Thresholds) -> list[str]:
    """Each figure below its threshold, written out; empty when the model passes."""
    checks = (
        ("centred cosine mean", figures["centred_cosine_mean"], thresholds.min_centred_cosine_mean),
        ("centred cosine min", figures["centred_cosine_min"], thresholds.min_centred_cosine),
        ("top-5 neighbour overlap", figures["top5_overlap"], thresholds.min_top5_overlap),
    )
    return [f"{name} {value:.4f} < {least}" for name, value, least in checks if value < least]


def check_accuracy(
    figures: dict[str, Any], thresholds: Thresholds, precision: str = "int8"
) -> None:
    """Raise AccuracyRefused, with every figure, when any is below its threshold."""
    below = shortfalls(figures, thresholds)
    if below:
        raise AccuracyRefused(
            f"{precision} model refused: {'; '.join(below)} on {figures['images']} held-out images "
            f"(figures {figures}, thresholds {asdict(thresholds)}); nothing was embedded. "
            "Use --precision float32, or calibrate on images closer to the day's"
        )

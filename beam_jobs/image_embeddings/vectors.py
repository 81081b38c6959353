"""Vector helpers both sides share: unit rows and row-wise cosines."""

from __future__ import annotations

import numpy as np


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32, or float64 kept); an all-zero row stays zero."""
    vectors = np.asarray(vectors, dtype=np.result_type(vectors, np.float32))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def row_cosines(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The cosine of each row of `left` with the same row of `right`; 0 for a zero row."""
    return np.sum(unit_rows(left) * unit_rows(right), axis=1)

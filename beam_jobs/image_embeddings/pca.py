"""A day's PCA axes (`pca.npz`): the mean they centre on, the unit axes, the projection."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PcaAxes:
    """The axes a fitted PCA keeps (unit rows of `components`) and the mean it centres on."""

    components: np.ndarray
    mean: np.ndarray

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Coordinates of `vectors` on the axes, float32 (what `PCA.transform` computes)."""
        return ((vectors - self.mean) @ self.components.T).astype(np.float32, copy=False)

    @classmethod
    def from_npz(cls, data: bytes) -> PcaAxes:
        """The axes stored in a `pca.npz`'s bytes (plain arrays, read without pickle)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            return cls(components=saved["components"], mean=saved["mean"])

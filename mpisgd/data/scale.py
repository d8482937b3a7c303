"""Standardisation: per-feature mean and scale, kept with the model.

A :class:`Scaler` maps raw feature values to ``(x - mean) / scale``, as scikit-learn's
``StandardScaler`` does (population standard deviation; a constant feature keeps scale
1 so that it maps to 0 instead of dividing by zero). Training computes it from the
training rows (``data.standardize``), applies it to training and held-out rows, and
stores it in model.h5; ``eval``, ``predict`` and ``mpisgd.load_model`` apply it to raw
rows. Pure NumPy: no MPI here (the reduction that computes it lives with training).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scaler:
    """Per-feature ``mean`` and ``scale`` (float64, one value per feature)."""

    mean: np.ndarray
    scale: np.ndarray

    def __post_init__(self):
        mean = np.ascontiguousarray(self.mean, dtype=np.float64)
        scale = np.ascontiguousarray(self.scale, dtype=np.float64)
        if mean.ndim != 1 or mean.shape != scale.shape:
            raise ValueError(f"mean and scale need one value per feature; found shapes "
                             f"{mean.shape} and {scale.shape}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(scale))
                and np.all(scale > 0)):
            raise ValueError("mean must be finite and scale finite and positive")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "scale", scale)

    @property
    def n_features(self) -> int:
        return self.mean.size

    def transform(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``(X - mean) / scale`` in X's dtype; ``out=X`` transforms in place."""
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"rows of {self.n_features} features expected; found shape "
                             f"{X.shape}")
        if out is None:
            out = np.empty_like(X)
        np.subtract(X, self.mean.astype(X.dtype), out=out)
        np.divide(out, self.scale.astype(X.dtype), out=out)
        return out

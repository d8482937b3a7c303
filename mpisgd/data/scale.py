"""Standardisation: per-feature mean and scale, kept with the model.

A :class:`Scaler` maps raw feature values to ``(x - mean) / scale``, as scikit-learn's
``StandardScaler`` does (population standard deviation; a constant feature keeps scale
1 so that it maps to 0 instead of dividing by zero). Training computes it from the
training rows (``data.standardize``), applies it to training and held-out rows, and
stores it in model.h5; ``eval``, ``predict`` and ``mpisgd.load_model`` apply it to raw
rows. Pure NumPy: no MPI here (the reduction that computes it lives with training).

:class:`Moments` are what ranks exchange to get there: per-feature count, mean, sum of
squared deviations, min and max, in float64. A block's moments are exact to rounding
whatever its offset (two-pass within the block, in memory), and two sets merge with the
pairwise update of Chan, Golub and LeVeque, which combines deviations, never raw sums of
squares: a feature whose mean is 1e9 times its spread keeps its spread. Merged in any
grouping, the result differs only by rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Rows per block of a moment pass: the float64 copy of one block stays near 8 MiB.
_BLOCK_BYTES = 8 << 20


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


@dataclass(frozen=True)
class Moments:
    """Per-feature moments of a set of rows: count ``n``, ``mean``, ``m2`` (the sum of
    squared deviations from the mean), ``lo`` and ``hi`` (min and max); float64."""

    n: float
    mean: np.ndarray
    m2: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def empty(cls, n_features: int) -> Moments:
        """No rows: the identity of :meth:`merge`."""
        zero = np.zeros(n_features)
        return cls(0.0, zero, zero.copy(), np.full(n_features, np.inf),
                   np.full(n_features, -np.inf))

    @classmethod
    def of(cls, X: np.ndarray) -> Moments:
        """The moments of the rows of ``X`` (one block, held in memory)."""
        if X.shape[0] == 0:
            return cls.empty(X.shape[1])
        B = np.array(X, dtype=np.float64)
        lo, hi = B.min(axis=0), B.max(axis=0)
        n = B.shape[0]
        mean = B.mean(axis=0)
        dev = np.subtract(B, mean, out=B)
        # The corrected two-pass formula: the deviations' own sum repairs the rounding
        # of the first pass's mean (to first order in the mean, second order in m2).
        fix = dev.sum(axis=0)
        m2 = np.einsum("ij,ij->j", dev, dev) - fix * fix / n
        return cls(float(n), mean + fix / n, np.maximum(m2, 0.0), lo, hi)

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets of rows (Chan, Golub and LeVeque's pairwise update)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        with np.errstate(all="ignore"):   # NaN or Inf rows propagate; the caller reports
            delta = other.mean - self.mean
            mean = self.mean + delta * (other.n / n)
            m2 = self.m2 + other.m2 + delta * delta * (self.n * other.n / n)
        return Moments(n, mean, m2, np.minimum(self.lo, other.lo),
                       np.maximum(self.hi, other.hi))

    @property
    def n_features(self) -> int:
        return self.mean.size

    def std(self) -> np.ndarray:
        """Population standard deviation (ddof = 0), as StandardScaler."""
        return np.sqrt(self.m2 / self.n) if self.n else np.zeros(self.n_features)

    def constant(self) -> np.ndarray:
        """True for features with a single value (or no rows): they keep scale 1."""
        return ~(self.hi > self.lo)

    def bad_features(self) -> np.ndarray:
        """Indices of the features whose moments are not finite (NaN or Inf in the rows)."""
        finite = np.isfinite(self.mean) & np.isfinite(self.m2)
        return np.flatnonzero(~finite)

    def scaler(self) -> Scaler:
        """The Scaler of these rows; ValueError without rows or with non-finite values."""
        if self.n == 0:
            raise ValueError("no rows to standardise with")
        std = self.std()
        # An exact constant is known from min == max; a spread that rounds to zero
        # cannot be divided by either.
        return Scaler(self.mean, np.where(self.constant() | ~(std > 0), 1.0, std))

    def pack(self) -> np.ndarray:
        """One float64 record: n, mean, m2, lo, hi (what ranks exchange)."""
        return np.concatenate([[self.n], self.mean, self.m2, self.lo, self.hi])

    @classmethod
    def unpack(cls, record: np.ndarray) -> Moments:
        d = (record.size - 1) // 4
        if record.size != 4 * d + 1:
            raise ValueError(f"a moments record has 4 d + 1 values; found {record.size}")
        parts = (record[1 + k * d:1 + (k + 1) * d].copy() for k in range(4))
        return cls(float(record[0]), *parts)


def block_rows(n_features: int) -> int:
    """Rows per block of a moment pass (bounded memory for any row count)."""
    return max(1, _BLOCK_BYTES // (8 * max(1, n_features)))


def moments_of(X: np.ndarray, rows: np.ndarray | None = None) -> Moments:
    """The moments of ``X[rows]`` (all rows when None), block by block."""
    n = X.shape[0] if rows is None else rows.size
    step = block_rows(X.shape[1])
    out = Moments.empty(X.shape[1])
    for a in range(0, n, step):
        block = X[a:a + step] if rows is None else X[rows[a:a + step]]
        out = out.merge(Moments.of(block))
    return out


def spread_ratio(m: Moments) -> tuple[float, int, int]:
    """(largest / smallest standard deviation over the non-constant features with finite
    moments, the widest feature, the narrowest feature); (1, -1, -1) with fewer than two
    such features."""
    std = m.std()
    ok = np.flatnonzero(~m.constant() & np.isfinite(std) & (std > 0))
    if ok.size < 2:
        return 1.0, -1, -1
    wide, narrow = ok[np.argmax(std[ok])], ok[np.argmin(std[ok])]
    return float(std[wide] / std[narrow]), int(wide), int(narrow)

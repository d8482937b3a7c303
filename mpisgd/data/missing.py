"""Missing values in a converted input: refuse them naming the column, or drop, zero or
mean (``mpisgd data convert --missing``).

A source hands over a missing value as NaN (:mod:`mpisgd.data.inputs`). ``error`` (the
default) stops at the first one and names its line and column; ``drop`` leaves out every
row with a missing feature or label; ``zero`` and ``mean`` fill missing features with 0
or with the mean of the column's present values over the whole file (a first pass,
:class:`ColumnMeans`). A row without a label has nothing to fill it with: it is an error
unless dropped. Infinities are not missing values: the converter refuses them.
"""

from __future__ import annotations

import numpy as np

from mpisgd.data.labels import missing_text
from mpisgd.errors import DataError

POLICIES = ("error", "drop", "zero", "mean")
_ADVICE = "drop such rows or fill the features: --missing drop|zero|mean"


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise DataError(f"missing must be one of {', '.join(POLICIES)}; found {policy!r}")


def missing_label(source, no) -> DataError:
    """The error for a row whose label is missing (no policy can fill a label)."""
    return DataError(f"{source.unit} {no} of '{source.path}' has a missing value in "
                     f"{source.label_name}; a row without a label cannot be filled: drop "
                     "such rows (--missing drop) or give them labels")


class ColumnMeans:
    """Per-feature sum and count of the present values, accumulated over blocks."""

    def __init__(self, n_features: int):
        self.sum = np.zeros(n_features)
        self.count = np.zeros(n_features, dtype=np.int64)

    def add(self, X: np.ndarray) -> None:
        present = ~np.isnan(X)
        self.sum += np.where(present, X, 0.0).sum(axis=0)
        self.count += present.sum(axis=0)

    def means(self, source) -> np.ndarray:
        """The column means; DataError naming a column without any present value."""
        empty = np.flatnonzero(self.count == 0)
        if empty.size:
            raise DataError(f"{source.column_name(int(empty[0]))} of '{source.path}' has no "
                            "value at all, so --missing mean has no mean to fill it with; "
                            "drop the column or use --missing zero")
        with np.errstate(invalid="ignore", over="ignore"):
            return self.sum / self.count


def rows_kept(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows without any missing feature or label (labels as numbers,
    or as text: class names, whose missing values are spelled out)."""
    gaps = missing_text(y) if y.dtype.kind == "U" else np.isnan(y)
    return ~(np.isnan(X).any(axis=1) | gaps)


def apply(policy: str, X: np.ndarray, y: np.ndarray, nos: np.ndarray, source,
          fill: np.ndarray | None = None):
    """``(X, y, nos)`` of one block with its missing values handled by ``policy``;
    ``fill``: the column means for ``mean``. DataError for what the policy refuses."""
    gaps = np.isnan(X)
    if not gaps.any() and not np.isnan(y).any():
        return X, y, nos
    if policy == "drop":
        keep = ~(gaps.any(axis=1) | np.isnan(y))
        return X[keep], y[keep], nos[keep]
    if np.isnan(y).any():
        raise missing_label(source, nos[int(np.argmax(np.isnan(y)))])
    if policy == "error":
        row, col = np.argwhere(gaps)[0]
        raise DataError(f"{source.unit} {nos[row]} of '{source.path}' has a non-finite value: "
                        f"{source.column_name(int(col))} is missing ({int(gaps.sum())} missing "
                        f"value(s) in this block of {len(y)} rows); {_ADVICE}")
    X = X.copy()
    X[gaps] = 0.0 if policy == "zero" else np.broadcast_to(fill, X.shape)[gaps]
    return X, y, nos

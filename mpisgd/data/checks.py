"""Value checks on rows: X and y finite, labels in 0..n_classes-1.

Used on every block written (:class:`mpisgd.data.write.ShardWriter`) and on blocks read
for training and evaluation, so a NaN or a stray label is reported with its global row
instead of silently corrupting the model.
"""

from __future__ import annotations

import numpy as np

from mpisgd.data.format import DatasetInfo
from mpisgd.errors import DataError


def fmt_value(v) -> str:
    """A number for a message: integral floats without their ``.0``."""
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _check_finite(a: np.ndarray, name: str, where: str, first_row: int) -> None:
    if a.size == 0:
        return
    # A sum is NaN/Inf if any element is, and costs no temporary array; only when it
    # is not finite (or overflowed) do we pay for the element-wise search.
    with np.errstate(all="ignore"):
        total = a.sum()
    if np.isfinite(total):
        return
    bad = ~np.isfinite(a)
    count = int(np.count_nonzero(bad))
    if count == 0:
        return
    n_nan = int(np.count_nonzero(np.isnan(a)))
    rows = bad if a.ndim == 1 else bad.any(axis=1)
    row = int(np.argmax(rows))
    col = "" if a.ndim == 1 else f", column {int(np.argmax(bad[row]))}"
    raise DataError(f"{where}: {name} has {count} non-finite value(s) ({n_nan} NaN, "
                    f"{count - n_nan} Inf); the first is at row {first_row + row}{col}; "
                    "expected only finite numbers")


def _check_labels(y: np.ndarray, n_classes: int, where: str, first_row: int) -> None:
    if y.size == 0:
        return
    if y.dtype.kind == "f":
        _check_finite(y, "y", where, first_row)
        frac = y != np.floor(y)
        if frac.any():
            row = int(np.argmax(frac))
            raise DataError(f"{where}: labels must be integers 0..{n_classes - 1}; found "
                            f"{fmt_value(y[row])} at row {first_row + row}")
    elif y.dtype.kind not in "iu":
        raise DataError(f"{where}: labels have dtype {y.dtype}; expected integers")
    if y.min() >= 0 and y.max() < n_classes:
        return
    bad = (y < 0) | (y >= n_classes)
    row = int(np.argmax(bad))
    raise DataError(f"{where}: labels outside the classes: found label {fmt_value(y[row])} at "
                    f"row {first_row + row} but n_classes={n_classes} (labels must be "
                    f"0..{n_classes - 1}); {int(np.count_nonzero(bad))} label(s) out of range")


def check_block(X: np.ndarray, y: np.ndarray, task: str, n_classes: int, n_features: int,
                where: str, first_row: int) -> None:
    """Shapes of X and y, then their values; ``check_values`` without a DatasetInfo."""
    if X.ndim != 2 or X.shape[1] != n_features:
        raise DataError(f"{where}: X has shape {X.shape}; expected (rows, {n_features})")
    if y.shape != (X.shape[0],):
        raise DataError(f"{where}: y has shape {y.shape}; expected ({X.shape[0]},), one "
                        "value per row of X")
    _check_finite(X, "X", where, first_row)
    check_y(y, task, n_classes, where, first_row)


def check_y(y: np.ndarray, task: str, n_classes: int, where: str, first_row: int) -> None:
    """A regression ``y`` finite, labels integers in 0..n_classes-1."""
    if task == "regression":
        _check_finite(y, "y", where, first_row)
    else:
        _check_labels(y, n_classes, where, first_row)


def check_values(X: np.ndarray, y: np.ndarray, info: DatasetInfo, where: str, *,
                 first_row: int = 0) -> None:
    """Raise DataError if X or y holds NaN/Inf or a label is outside 0..n_classes-1.

    ``where`` starts the message (e.g. "rows [0, 1000) of 'train/'"); ``first_row`` is
    the global index of X's first row, so messages give global row numbers.
    """
    check_block(np.asarray(X), np.asarray(y), info.task, info.n_classes, info.n_features,
                where, first_row)

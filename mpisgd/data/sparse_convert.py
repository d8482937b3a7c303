"""Conversion to CSR shards: which layout an output gets, and the second pass over a
source in CSR blocks (missing values, infinities, labels).

Dense inputs (CSV, an ``.npz`` of X and y) stay dense unless asked (``layout="csr"``);
inputs that are sparse by nature (LIBSVM, a SciPy ``.npz``, hashed CSV) become CSR when
their dense X would take more than ``DENSE_LIMIT`` bytes, with a warning, and stay dense
otherwise, so that what trains today still does.
"""

from __future__ import annotations

import warnings

import numpy as np

from mpisgd.data.csr import LAYOUTS, CsrBlock
from mpisgd.data.hashed_csv import HashedCsvSource
from mpisgd.data.labelplan import (
    ConvertWarning,
    map_labels,
    report_rows,
    word_codes,
    words_for_regression,
)
from mpisgd.data.labels import WordLabel
from mpisgd.data.missing import missing_label
from mpisgd.data.sparse_inputs import DenseView, SparseView
from mpisgd.errors import DataError

# A sparse input whose dense X would exceed this is written as CSR unless asked dense.
DENSE_LIMIT = 1 << 30


def plan_layout(layout: str | None, source, missing: str) -> str:
    """'dense', 'csr', or 'auto' (decided after the first pass, :func:`auto_layout`)."""
    if layout is not None and layout not in LAYOUTS:
        raise DataError(f"layout must be one of {', '.join(LAYOUTS)}; found {layout!r}")
    if missing == "mean" and isinstance(source, HashedCsvSource):
        raise DataError("--missing mean fills a column with its mean, but hashed features "
                        "have no columns; use --missing drop or zero")
    if missing == "mean" and layout == "csr":
        raise DataError("--missing mean fills dense columns; a CSR output leaves missing "
                        "values out (--missing zero) or drops their rows (--missing drop)")
    if layout is not None:
        return layout
    if source.layout == "dense" or missing == "mean":
        return "dense"
    return "auto"


def view(source, layout: str):
    """``source`` handing over its rows in ``layout``."""
    if source.layout == layout:
        return source
    return DenseView(source) if layout == "dense" else SparseView(source)


def auto_layout(source, n_rows: int, itemsize: int, path: str) -> str:
    """CSR if the dense X of a sparse input would exceed DENSE_LIMIT (warning), else
    dense. ``n_rows``: from the first pass, or 0 when it did not run (then counted)."""
    if not n_rows:   # no first pass: only for regression, where a word is an error
        try:
            n_rows = sum(len(y) for y, _ in source.labels())
        except WordLabel as word:
            raise words_for_regression(source, word, path) from None
    size = n_rows * source.n_features * itemsize
    if size <= DENSE_LIMIT:
        return "dense"
    warnings.warn(f"'{path}': its {n_rows} rows x {source.n_features} features would take "
                  f"{size / 2 ** 30:.3g} GiB dense; written as CSR (sparse) shards "
                  "(--dense to write it dense anyway)", ConvertWarning, stacklevel=3)
    return "csr"


def _missing(policy: str, block: CsrBlock, y: np.ndarray, nos: np.ndarray, source):
    """(block, y, nos, values filled) with the block's missing (NaN) values handled."""
    gaps = np.isnan(block.values)
    no_label = np.isnan(y)
    if not gaps.any() and not no_label.any():
        return block, y, nos, 0
    if policy == "drop":
        keep = ~no_label
        keep[block.row_of_entries()[gaps]] = False
        return block.take(keep), y[keep], nos[keep], 0
    if no_label.any():
        raise missing_label(source, nos[int(np.argmax(no_label))])
    if policy == "error":
        k = int(np.argmax(gaps))
        row = int(block.row_of_entries()[k])
        raise DataError(f"{source.unit} {nos[row]} of '{source.path}' has a non-finite value: "
                        f"{source.column_name(int(block.indices[k]))} is missing "
                        f"({int(gaps.sum())} missing value(s) in this block of {len(y)} "
                        "rows); drop such rows or leave the values out: --missing drop|zero")
    return block.drop_entries(gaps), y, nos, int(gaps.sum())


def _check_finite(block: CsrBlock, y: np.ndarray | None, nos: np.ndarray, source) -> None:
    """Infinities (NaN was handled before) in the values or a regression y."""
    with np.errstate(all="ignore"):
        if np.isfinite(block.values.sum()) and (y is None or np.isfinite(y.sum())):
            return
    bad = ~np.isfinite(block.values)
    if bad.any():
        k = int(np.argmax(bad))
        row = int(block.row_of_entries()[k])
        raise DataError(f"{source.unit} {nos[row]} of '{source.path}' has a non-finite value "
                        f"({block.values[k]}) in {source.column_name(int(block.indices[k]))}; "
                        "expected finite numbers")
    if y is not None:
        i = int(np.argmax(~np.isfinite(y)))
        raise DataError(f"{source.unit} {nos[i]} of '{source.path}' has a non-finite value "
                        f"({y[i]}) in {source.label_name}; expected a finite number")


def csr_converted(source, task: str, label_values, path: str, missing: str):
    """The second pass in CSR: (CsrBlock, y) blocks, missing values handled, values
    checked and labels mapped to 0..C-1."""
    rows = dropped = filled = 0
    words = source.words
    mapping = np.arange(len(label_values), dtype=np.float64) if words else label_values
    try:
        for block, y, nos in source.blocks():
            if words:
                y = word_codes(y, label_values, nos, source, path)
            n = len(y)
            block, y, nos, count = _missing(missing, block, y, nos, source)
            dropped, filled = dropped + n - len(y), filled + count
            _check_finite(block, y if task == "regression" else None, nos, source)
            if task != "regression":
                y = map_labels(y, mapping, nos, source.unit, path)
            rows += len(y)
            yield block, y
    except WordLabel as word:   # regression without a first pass meets a word
        if task != "regression":
            raise
        raise words_for_regression(source, word, path) from None
    # a hashed source handles its missing values before hashing: its counts join ours
    dropped += getattr(source, "dropped", 0)
    filled += getattr(source, "filled", 0)
    report_rows(path, rows, dropped, filled, missing)

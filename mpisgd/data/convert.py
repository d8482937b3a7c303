"""Convert CSV, NumPy ``.npz`` and LIBSVM/svmlight files to mpisgd shards, streaming.

Text inputs are read in blocks of lines (:mod:`mpisgd.data.inputs`,
:mod:`mpisgd.data.sparse_inputs`, :mod:`mpisgd.data.hashed_csv`) and appended to a shard
writer, so a file larger than memory converts. A first pass over the labels (and, for
LIBSVM, the largest feature index) runs when the task, the label mapping or n_features
must be inferred, over whole rows when missing values are dropped or filled with column
means (:mod:`mpisgd.data.labelplan`, :mod:`mpisgd.data.missing`); the second pass parses
and writes, dense (here) or CSR (:mod:`mpisgd.data.sparse_convert`).
"""

from __future__ import annotations

import numbers
import os

import numpy as np

from mpisgd.data.csr_write import CsrShardWriter
from mpisgd.data.format import DatasetInfo, float_dtype, open_dataset
from mpisgd.data.inputs import detect_format
from mpisgd.data.labelplan import (
    MAX_INFERRED_CLASSES,
    WARN_CLASSES,
    WARN_ROWS_PER_CLASS,
    ConvertWarning,
    first_pass,
    map_labels,
    plan_labels,
    report_rows,
    word_codes,
    words_for_regression,
)
from mpisgd.data.labels import WordLabel
from mpisgd.data.missing import apply as apply_missing
from mpisgd.data.missing import check_policy
from mpisgd.data.shuffle import shuffled
from mpisgd.data.sparse_convert import auto_layout, csr_converted, plan_layout, view
from mpisgd.data.sparse_inputs import open_input
from mpisgd.data.write import ShardWriter, write_blocks
from mpisgd.errors import DataError, OutputError
from mpisgd.models import TASKS

# The warning and the limits of the label inference live in labelplan; callers know
# them from here.
__all__ = ["MAX_INFERRED_CLASSES", "WARN_CLASSES", "WARN_ROWS_PER_CLASS", "ConvertWarning",
           "convert"]

def _check_finite_rows(X: np.ndarray, y: np.ndarray | None, nos: np.ndarray,
                       source) -> None:
    """Infinities (missing values, NaN, were handled before) in X or a regression y."""
    with np.errstate(all="ignore"):
        if np.isfinite(X.sum()) and (y is None or np.isfinite(y.sum())):
            return
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{source.unit} {nos[row]} of '{source.path}' has a non-finite value "
                        f"({X[row, col]}) in {source.column_name(int(col))}; expected finite "
                        "numbers")
    if y is not None:
        i = int(np.argmax(~np.isfinite(y)))
        raise DataError(f"{source.unit} {nos[i]} of '{source.path}' has a non-finite value "
                        f"({y[i]}) in {source.label_name}; expected a finite number")



def _check_args(path: str, output: str, task, dtype, overwrite: bool, **positive) -> np.dtype:
    """Reject bad arguments before reading anything; returns the output dtype."""
    if not os.path.isfile(path):
        raise DataError(f"input file '{path}' does not exist" if not os.path.exists(path)
                        else f"input '{path}' is not a file")
    if task is not None and task not in TASKS:
        raise DataError(f"task must be one of {', '.join(TASKS)}; found {task!r}")
    dt = float_dtype(dtype, "convert")
    for name, value in positive.items():
        if value is not None and (not isinstance(value, numbers.Integral) or value < 1):
            raise DataError(f"convert: {name} must be a positive integer; found {value!r}")
    if os.path.lexists(output) and not overwrite:
        raise OutputError(f"output '{output}' already exists; remove it or ask to overwrite it "
                          "(--overwrite)")
    return dt


def _converted(source, task: str, label_values, path: str, missing: str, means):
    """The second pass: (X, y) blocks, missing values handled, values checked and labels
    mapped to 0..C-1."""
    rows = dropped = filled = 0
    words = source.words
    mapping = np.arange(len(label_values), dtype=np.float64) if words else label_values
    try:
        for X, y, nos in source.blocks():
            if words:
                y = word_codes(y, label_values, nos, source, path)
            n = len(y)
            if missing in ("zero", "mean"):
                filled += int(np.isnan(X).sum())
            X, y, nos = apply_missing(missing, X, y, nos, source, means)
            dropped += n - len(y)
            _check_finite_rows(X, y if task == "regression" else None, nos, source)
            if task != "regression":
                y = map_labels(y, mapping, nos, source.unit, path)
            rows += len(y)
            yield X, y
    except WordLabel as word:   # regression without a first pass meets a word
        if task != "regression":
            raise
        raise words_for_regression(source, word, path) from None
    # a hashed source handles its missing values before hashing: its counts join ours
    report_rows(path, rows, dropped + getattr(source, "dropped", 0),
                filled + getattr(source, "filled", 0), missing)



def convert(input, output, *, task: str | None = None, n_classes: int | None = None,
            label_column: int | str = -1, dtype="float32", rows_per_shard: int | None = None,
            n_features: int | None = None, input_format: str | None = None,
            block_rows: int = 65536, overwrite: bool = False,
            shuffle: int | None = None, missing: str = "error",
            zero_based: bool = False, layout: str | None = None,
            hash_features: int | None = None, hash_seed: int = 0, categorical=(),
            labels=None) -> DatasetInfo:
    """Convert a CSV, ``.npz`` or LIBSVM file to an mpisgd dataset; return its info.

    ``output`` ending in ``.h5`` (and no ``rows_per_shard``) is written as one shard
    file; anything else becomes a folder of ``part-*.h5`` shards of ``rows_per_shard``
    rows (one shard if None). Classification labels are mapped to 0..C-1 (sorted
    original values; -1/+1 -> 0/1) and the originals kept in ``label_values``; labels
    that are not all numbers are class names (words), sorted as strings, and
    ``label_values`` holds them as str.
    ``shuffle``: a seed; the rows are written in a random order fixed by it
    (:mod:`mpisgd.data.shuffle`), else in the input's order. ``missing``: what becomes
    of a missing value (an empty CSV field, NA, nan, ...): ``error`` (naming its line and
    column), ``drop`` the row, fill with ``zero`` or with the column's ``mean``.
    ``zero_based``: LIBSVM feature indices start at 0. An inferred multiclass task of
    many classes for its rows warns (:class:`ConvertWarning`) naming ``--task regression``.
    ``layout``: "dense", "csr" or None (dense inputs dense; LIBSVM, SciPy ``.npz`` and
    hashed CSV as CSR when dense would exceed 1 GiB). ``hash_features``: bits; a CSV's
    columns hashed into 2^bits features with seed ``hash_seed`` (``categorical``: columns
    hashed as words even if they hold numbers). ``labels``: a ``.npy`` of the labels of a
    SciPy sparse ``.npz``.
    """
    path, output = os.fspath(input), os.fspath(output)
    dt = _check_args(path, output, task, dtype, overwrite, rows_per_shard=rows_per_shard,
                     n_features=n_features, block_rows=block_rows)
    check_policy(missing)
    source = open_input(input_format or detect_format(path), path, label_column=label_column,
                        n_features=n_features, block_rows=block_rows, zero_based=zero_based,
                        hash_bits=hash_features, hash_seed=hash_seed,
                        categorical=categorical, labels=None if labels is None
                        else os.fspath(labels))
    layout = plan_layout(layout, source, missing)
    source.drop, source.missing = missing == "drop", missing
    if layout != "auto":
        source = view(source, layout)
    scan, means = first_pass(source, task, missing, path)
    task, n_classes, label_values = plan_labels(scan, task, n_classes, path)
    if layout == "auto":
        layout = auto_layout(source, scan.n_rows, dt.itemsize, path)
        source = view(source, layout)
    if layout == "csr":
        blocks = csr_converted(source, task, label_values, path, missing)
        writer, row_bytes = CsrShardWriter, None
    else:
        blocks = _converted(source, task, label_values, path, missing, means)
        writer, row_bytes = ShardWriter, source.n_features * dt.itemsize
    if shuffle is not None:
        blocks = shuffled(blocks, shuffle, scan.n_rows or None, row_bytes, output)
    write_blocks(blocks, output, rows_per_shard, overwrite, scan.n_rows or None, writer=writer,
                 n_features=source.n_features, task=task, n_classes=n_classes, dtype=dt,
                 label_values=label_values, feature_names=source.feature_names)
    return open_dataset(output)

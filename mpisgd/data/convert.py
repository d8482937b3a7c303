"""Convert CSV, NumPy ``.npz`` and LIBSVM/svmlight files to mpisgd shards, streaming.

Text inputs are read in blocks of lines (:mod:`mpisgd.data.inputs`) and appended to a
ShardWriter, so a file larger than memory converts. A first pass over the labels (and,
for LIBSVM, the largest feature index) runs when the task, the label mapping or
n_features must be inferred; the second pass parses and writes.
"""

from __future__ import annotations

import numbers
import os

import numpy as np

from mpisgd.data.checks import fmt_value
from mpisgd.data.format import DatasetInfo, float_dtype, open_dataset
from mpisgd.data.inputs import detect_format, open_source
from mpisgd.data.shuffle import shuffled
from mpisgd.data.write import FolderBuild, ShardWriter, shard_file_name
from mpisgd.errors import DataError, OutputError
from mpisgd.models import TASKS

# Integer labels with more distinct values than this are taken for a regression target.
MAX_INFERRED_CLASSES = 1000
# Shard names of a streamed folder are padded for this many shards (count unknown ahead).
_MAX_STREAMED_SHARDS = 10 ** 6


# ---------------------------------------------------------------------------------
# Labels: what the first pass learns, and the task and mapping decided from it.

class _LabelScan:
    def __init__(self, source):
        self.source = source
        self.n_rows = 0
        self.integer = True
        self.first_fraction = None  # (value, line) of the first non-integer label
        self.distinct: set[float] | None = set()

    def update(self, y: np.ndarray, nos: np.ndarray) -> None:
        self.n_rows += len(y)
        bad = ~np.isfinite(y)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{self.source.unit} {nos[i]} of '{self.source.path}': the label "
                            f"is {y[i]}; expected a finite number")
        if self.integer:
            frac = y != np.floor(y)
            if frac.any():
                i = int(np.argmax(frac))
                self.integer, self.first_fraction, self.distinct = False, (y[i], nos[i]), None
        if self.distinct is not None:
            self.distinct.update(np.unique(y).tolist())
            if len(self.distinct) > MAX_INFERRED_CLASSES:
                self.distinct = None


def _plan_labels(scan: _LabelScan, task, n_classes, path: str):
    """(task, n_classes, label_values or None) for the scanned labels."""
    if task is None and n_classes is not None:
        task = "regression" if n_classes == 0 else "binary" if n_classes == 2 else "multiclass"
    if task is None:
        if not scan.integer or scan.distinct is None:
            task = "regression"
        elif len(scan.distinct) == 1:
            raise DataError(f"cannot infer the task of '{path}': every label is "
                            f"{fmt_value(next(iter(scan.distinct)))}; pass the task (--task)")
        else:
            task = "binary" if len(scan.distinct) == 2 else "multiclass"
    if task == "regression":
        if n_classes not in (None, 0):
            raise DataError(f"task 'regression' has n_classes=0; found n_classes={n_classes}")
        return task, 0, None
    if task == "binary" and n_classes not in (None, 2):
        raise DataError(f"task 'binary' has n_classes=2; found n_classes={n_classes}")
    if not scan.integer:
        value, no = scan.first_fraction
        raise DataError(f"task '{task}' needs integer labels, but {scan.source.unit} {no} of "
                        f"'{path}' has label {value}")
    if scan.distinct is None:
        raise DataError(f"'{path}' has more than {MAX_INFERRED_CLASSES} distinct labels; "
                        f"too many for task '{task}' (use --task regression?)")
    values = sorted(scan.distinct)
    want = 2 if task == "binary" else n_classes
    if want is not None and all(0 <= v < want for v in values):
        return task, want, np.arange(want, dtype=np.float64)  # already 0..C-1
    if task == "binary" and set(values) <= {-1.0, 1.0}:
        return task, 2, np.array([-1.0, 1.0])  # the LIBSVM convention: -1 -> 0, +1 -> 1
    shown = ", ".join(fmt_value(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
    if task == "binary" and len(values) != 2:
        raise DataError(f"task 'binary' needs 2 distinct labels (or labels in 0/1 or -1/+1); "
                        f"'{path}' has {len(values)}: {shown}")
    if want is not None and len(values) != want:
        raise DataError(f"n_classes={want}, but the labels of '{path}' are neither 0..{want - 1} "
                        f"nor {want} distinct values to map onto them; found {len(values)}: "
                        f"{shown}")
    if len(values) < 2:
        raise DataError(f"task 'multiclass' needs at least 2 distinct labels; '{path}' has "
                        f"only {shown}")
    return task, len(values), np.array(values, dtype=np.float64)


def _map_labels(y: np.ndarray, label_values: np.ndarray, nos: np.ndarray, unit: str,
                path: str) -> np.ndarray:
    codes = np.searchsorted(label_values, y)
    ok = label_values[np.minimum(codes, len(label_values) - 1)] == y
    if not ok.all():
        i = int(np.argmax(~ok))
        raise DataError(f"{unit} {nos[i]} of '{path}' has label {fmt_value(y[i])}, which is not "
                        f"one of the classes {[fmt_value(v) for v in label_values]}")
    return codes.astype(np.int64)


def _check_finite_rows(X: np.ndarray, nos: np.ndarray, unit: str, path: str) -> None:
    with np.errstate(all="ignore"):
        if np.isfinite(X.sum()):
            return
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{unit} {nos[i]} of '{path}' has a non-finite feature value; "
                        "expected finite numbers (no nan/inf)")


# ---------------------------------------------------------------------------------
# Writing, and the conversion itself.

def _write(blocks, output: str, rows_per_shard, overwrite: bool, n_rows_hint, **writer_kw):
    """Append converted blocks to one shard file, or to a folder of rolling shards."""
    if rows_per_shard is None and output.endswith(".h5"):
        if os.path.lexists(output) and not overwrite:
            raise OutputError(f"output '{output}' already exists; remove it or ask to "
                              "overwrite it (--overwrite)")
        with ShardWriter(output, expected_rows=n_rows_hint, **writer_kw) as w:
            for X, y in blocks:
                w.append(X, y)
        return
    if rows_per_shard is None:
        n_shards = 1
    else:  # only the width of the zero-padded shard numbers depends on this
        n_shards = -(-n_rows_hint // rows_per_shard) if n_rows_hint else _MAX_STREAMED_SHARDS
    with FolderBuild(output, overwrite=overwrite) as build:
        writer, k = None, 0
        try:
            for X, y in blocks:
                pos = 0
                while pos < len(X):
                    if writer is None:
                        if k >= _MAX_STREAMED_SHARDS:
                            raise DataError("conversion would write over a million shards; "
                                            "raise rows_per_shard")
                        path = os.path.join(build.path, shard_file_name(k, n_shards))
                        writer = ShardWriter(path, expected_rows=rows_per_shard or n_rows_hint,
                                             **writer_kw)
                    take = len(X) - pos if rows_per_shard is None else \
                        min(len(X) - pos, rows_per_shard - writer.n_rows)
                    writer.append(X[pos:pos + take], y[pos:pos + take])
                    pos += take
                    if writer.n_rows == rows_per_shard:
                        writer.close()
                        writer, k = None, k + 1
            if writer is not None:
                writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise



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


def _scan_labels(source, task, path: str) -> _LabelScan:
    """The first pass; needed unless the task is regression and n_features is known."""
    scan = _LabelScan(source)
    if task != "regression" or source.n_features is None:
        for y, nos in source.labels():
            scan.update(y, nos)
        if scan.n_rows == 0:
            raise DataError(f"input '{path}' has no data rows")
    if not source.n_features:
        raise DataError(f"'{path}' has no feature index; pass n_features (--features)")
    return scan


def _converted(source, task: str, label_values, path: str):
    """The second pass: (X, y) blocks, values checked and labels mapped to 0..C-1."""
    rows = 0
    for X, y, nos in source.blocks():
        _check_finite_rows(X, nos, source.unit, path)
        if task == "regression":
            _check_finite_rows(y[:, None], nos, source.unit, path)
        else:
            y = _map_labels(y, label_values, nos, source.unit, path)
        rows += len(y)
        yield X, y
    if rows == 0:
        raise DataError(f"input '{path}' has no data rows")


def convert(input, output, *, task: str | None = None, n_classes: int | None = None,
            label_column: int | str = -1, dtype="float32", rows_per_shard: int | None = None,
            n_features: int | None = None, input_format: str | None = None,
            block_rows: int = 65536, overwrite: bool = False,
            shuffle: int | None = None) -> DatasetInfo:
    """Convert a CSV, ``.npz`` or LIBSVM file to an mpisgd dataset; return its info.

    ``output`` ending in ``.h5`` (and no ``rows_per_shard``) is written as one shard
    file; anything else becomes a folder of ``part-*.h5`` shards of ``rows_per_shard``
    rows (one shard if None). Classification labels are mapped to 0..C-1 (sorted
    original values; -1/+1 -> 0/1) and the originals kept in ``label_values``.
    ``shuffle``: a seed; the rows are written in a random order fixed by it
    (:mod:`mpisgd.data.shuffle`), else in the input's order.
    """
    path, output = os.fspath(input), os.fspath(output)
    dt = _check_args(path, output, task, dtype, overwrite, rows_per_shard=rows_per_shard,
                     n_features=n_features, block_rows=block_rows)
    source = open_source(input_format or detect_format(path), path, label_column=label_column,
                         n_features=n_features, block_rows=block_rows)
    scan = _scan_labels(source, task, path)
    task, n_classes, label_values = _plan_labels(scan, task, n_classes, path)
    blocks = _converted(source, task, label_values, path)
    if shuffle is not None:
        blocks = shuffled(blocks, shuffle, scan.n_rows or None,
                          source.n_features * dt.itemsize, output)
    _write(blocks, output, rows_per_shard, overwrite,
           scan.n_rows or None, n_features=source.n_features, task=task, n_classes=n_classes,
           dtype=dt, label_values=label_values, feature_names=source.feature_names)
    return open_dataset(output)

"""Convert CSV, NumPy ``.npz`` and LIBSVM/svmlight files to mpisgd shards, streaming.

Text inputs are read in blocks of lines and appended to a ShardWriter, so a file
larger than memory converts. A first pass over the labels (and, for LIBSVM, the
largest feature index) runs when the task, the label mapping or n_features must be
inferred; the second pass parses and writes.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import numbers
import os
from typing import Iterator

import numpy as np

from mpisgd.errors import DataError, OutputError
from mpisgd.data.format import (TASKS, DatasetInfo, FolderBuild, ShardWriter, _float_dtype,
    open_dataset, shard_file_name)

FORMATS = ("csv", "npz", "libsvm")
# Integer labels with more distinct values than this are taken for a regression target.
MAX_INFERRED_CLASSES = 1000
# Shard names of a streamed folder are padded for this many shards (count unknown ahead).
_MAX_STREAMED_SHARDS = 10 ** 6
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _open_text(path: str):
    opener = _OPENERS.get(os.path.splitext(path)[1].lower())
    try:
        if opener is not None:
            return opener(path, "rt", encoding="utf-8")
        return open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read input '{path}': {e.strerror or e}") from e


def _read_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) of every non-blank, non-comment line."""
    fh = _open_text(path)
    try:
        with fh:
            for no, line in enumerate(fh, 1):
                s = line.strip()
                if s and not s.startswith("#"):
                    yield no, s
    except UnicodeDecodeError as e:
        raise DataError(f"input '{path}' is not UTF-8 text: {e}") from e
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read input '{path}': {e}") from e


def _line_blocks(path: str, block_rows: int, skip_until: int = 0
                 ) -> Iterator[tuple[list[str], np.ndarray]]:
    lines: list[str] = []
    nos: list[int] = []
    for no, s in _read_lines(path):
        if no <= skip_until:
            continue
        lines.append(s)
        nos.append(no)
        if len(lines) == block_rows:
            yield lines, np.array(nos)
            lines, nos = [], []
    if lines:
        yield lines, np.array(nos)


def detect_format(path: str) -> str:
    """'npz', 'csv' or 'libsvm' from the extension, else from the first data line."""
    name = os.path.basename(path).lower()
    for ext in _OPENERS:
        if name.endswith(ext):
            name = name[: -len(ext)]
    if name.endswith(".npz"):
        return "npz"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith((".svm", ".libsvm", ".svmlight")):
        return "libsvm"
    with contextlib.closing(_read_lines(path)) as lines:
        first = next(lines, None)
    if first is None:
        raise DataError(f"input '{path}' has no data lines")
    tokens = first[1].split("#", 1)[0].split()
    return "libsvm" if len(tokens) > 1 and all(":" in t for t in tokens[1:]) else "csv"


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------
# Sources: each yields (X float64, y float64, numbers) blocks, where ``numbers`` names
# the line (text) or row (npz) of each block row for error messages.

class _CsvSource:
    unit = "line"

    def __init__(self, path: str, label_column, block_rows: int):
        self.path, self.block_rows = path, block_rows
        with contextlib.closing(_read_lines(path)) as lines:
            first = next(lines, None)
        if first is None:
            raise DataError(f"input '{path}' has no data lines")
        no, line = first
        self.delim = next((d for d in (",", "\t", ";") if d in line), None)
        fields = [f.strip().strip('"').strip("'") for f in line.split(self.delim)]
        self.header_line = 0 if all(_is_number(f) for f in fields) else no
        self.ncols = len(fields)
        if self.ncols < 2:
            raise DataError(f"line {no} of '{path}' has {self.ncols} field; expected at least "
                            "one feature and a label")
        self.label = self._resolve_label(label_column, fields if self.header_line else None)
        self.n_features = self.ncols - 1
        self.feature_names = ([f for i, f in enumerate(fields) if i != self.label]
                              if self.header_line else None)

    def _resolve_label(self, column, header) -> int:
        if isinstance(column, str) and not column.lstrip("-").isdigit():
            if header is None or column not in header:
                raise DataError(f"label column '{column}' is not in the header of "
                                f"'{self.path}'; found {header or 'no header'}")
            return header.index(column)
        col = int(column)
        if not -self.ncols <= col < self.ncols:
            raise DataError(f"label column {col} is outside the {self.ncols} columns of "
                            f"'{self.path}'")
        return col % self.ncols

    def _parse(self, lines: list[str], nos: np.ndarray, usecols=None) -> np.ndarray:
        try:
            arr = np.loadtxt(lines, delimiter=self.delim, comments=None, ndmin=2,
                             dtype=np.float64, usecols=usecols,
                             quotechar='"' if self.delim else None)
        except ValueError as e:
            self._find_bad_line(lines, nos)
            raise DataError(f"lines {nos[0]}-{nos[-1]} of '{self.path}': {e}") from e
        if usecols is None and arr.shape[1] != self.ncols:
            self._find_bad_line(lines, nos)
        return arr

    def _find_bad_line(self, lines: list[str], nos: np.ndarray) -> None:
        """Re-parse slowly to name the first bad line; the fast parser only says 'bad'."""
        for line, no in zip(lines, nos):
            fields = line.split(self.delim)
            if len(fields) != self.ncols:
                raise DataError(f"line {no} of '{self.path}' has {len(fields)} fields; "
                                f"expected {self.ncols} like the first line (ragged row)")
            for i, f in enumerate(fields):
                if not _is_number(f.strip().strip('"')):
                    raise DataError(f"line {no} of '{self.path}': field {i + 1} is {f!r}, "
                                    "which is not a number")

    def labels(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for lines, nos in _line_blocks(self.path, self.block_rows, self.header_line):
            yield self._parse(lines, nos, usecols=[self.label])[:, 0], nos

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for lines, nos in _line_blocks(self.path, self.block_rows, self.header_line):
            arr = self._parse(lines, nos)
            yield np.delete(arr, self.label, axis=1), arr[:, self.label], nos


class _LibsvmSource:
    unit = "line"
    feature_names = None

    def __init__(self, path: str, n_features: int | None, block_rows: int):
        self.path, self.block_rows, self.n_features = path, block_rows, n_features

    def _parse(self, lines: list[str], nos: np.ndarray):
        """Labels, and (row, 0-based column, value) triplets of the nonzeros."""
        y = np.empty(len(lines))
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        for r, (line, no) in enumerate(zip(lines, nos)):
            tokens = line.split("#", 1)[0].split()
            try:
                y[r] = float(tokens[0])
            except (ValueError, IndexError):
                raise DataError(f"line {no} of '{self.path}': the label "
                                f"{tokens[0] if tokens else ''!r} is not a number") from None
            for tok in tokens[1:]:
                idx, sep, val = tok.partition(":")
                if idx == "qid":  # ranking query ids carry no feature
                    continue
                try:
                    i, v = int(idx), float(val)
                except ValueError:
                    i = v = None
                if not sep or i is None:
                    raise DataError(f"line {no} of '{self.path}': expected index:value, found "
                                    f"{tok!r}")
                if i < 1:
                    raise DataError(f"line {no} of '{self.path}': feature index {i}; LIBSVM "
                                    "indices are 1-based")
                if self.n_features is not None and i > self.n_features:
                    raise DataError(f"line {no} of '{self.path}': feature index {i} is larger "
                                    f"than n_features={self.n_features}")
                rows.append(r)
                cols.append(i - 1)
                vals.append(v)
        return y, np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64), \
            np.array(vals, dtype=np.float64)

    def labels(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        found = 0
        for lines, nos in _line_blocks(self.path, self.block_rows):
            y, _, cols, _ = self._parse(lines, nos)
            if cols.size:
                found = max(found, int(cols.max()) + 1)
            yield y, nos
        self.n_features = self.n_features or found

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for lines, nos in _line_blocks(self.path, self.block_rows):
            y, rows, cols, vals = self._parse(lines, nos)
            X = np.zeros((len(lines), self.n_features))
            X[rows, cols] = vals
            yield X, y, nos


class _NpzSource:
    unit = "row"
    feature_names = None

    def __init__(self, path: str, block_rows: int):
        self.path, self.block_rows = path, block_rows
        try:
            with np.load(path, allow_pickle=False) as z:
                names = list(z.keys())
                if "X" not in names or "y" not in names:
                    raise DataError(f"input '{path}' has arrays {names}; expected arrays "
                                    "'X' (rows x features) and 'y' (rows)")
                self.X, self.y = z["X"], z["y"]
        except DataError:
            raise
        except Exception as e:  # zipfile, pickle and OS errors all mean "not a usable npz"
            raise DataError(f"input '{path}' is not a readable .npz file: {e}") from e
        if self.X.ndim != 2 or self.X.dtype.kind not in "biuf":
            raise DataError(f"X in '{path}' must be a 2-D numeric array; found shape "
                            f"{self.X.shape} dtype {self.X.dtype}")
        if self.y.ndim != 1 or self.y.dtype.kind not in "biuf":
            raise DataError(f"y in '{path}' must be a 1-D numeric array; found shape "
                            f"{self.y.shape} dtype {self.y.dtype}")
        if self.y.shape[0] != self.X.shape[0]:
            raise DataError(f"shape mismatch: X has {self.X.shape[0]} rows but y has "
                            f"{self.y.shape[0]} in '{path}'")
        self.n_features = self.X.shape[1]

    def labels(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield self.y.astype(np.float64), np.arange(len(self.y))

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for a in range(0, len(self.y), self.block_rows):
            b = min(len(self.y), a + self.block_rows)
            yield self.X[a:b], self.y[a:b].astype(np.float64), np.arange(a, b)


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


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _plan_labels(scan: _LabelScan, task, n_classes, path: str):
    """(task, n_classes, label_values or None) for the scanned labels."""
    if task is None and n_classes is not None:
        task = "regression" if n_classes == 0 else "binary" if n_classes == 2 else "multiclass"
    if task is None:
        if not scan.integer or scan.distinct is None:
            task = "regression"
        elif len(scan.distinct) == 1:
            raise DataError(f"cannot infer the task of '{path}': every label is "
                            f"{_fmt(next(iter(scan.distinct)))}; pass the task (--task)")
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
    shown = ", ".join(_fmt(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
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
        raise DataError(f"{unit} {nos[i]} of '{path}' has label {_fmt(y[i])}, which is not "
                        f"one of the classes {[_fmt(v) for v in label_values]}")
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


def convert(input, output, *, task: str | None = None, n_classes: int | None = None,
            label_column: int | str = -1, dtype="float32", rows_per_shard: int | None = None,
            n_features: int | None = None, input_format: str | None = None,
            block_rows: int = 65536, overwrite: bool = False) -> DatasetInfo:
    """Convert a CSV, ``.npz`` or LIBSVM file to an mpisgd dataset; return its info.

    ``output`` ending in ``.h5`` (and no ``rows_per_shard``) is written as one shard
    file; anything else becomes a folder of ``part-*.h5`` shards of ``rows_per_shard``
    rows (one shard if None). Classification labels are mapped to 0..C-1 (sorted
    original values; -1/+1 -> 0/1) and the originals kept in ``label_values``.
    """
    path, output = os.fspath(input), os.fspath(output)
    if not os.path.isfile(path):
        raise DataError(f"input file '{path}' does not exist" if not os.path.exists(path)
                        else f"input '{path}' is not a file")
    if task is not None and task not in TASKS:
        raise DataError(f"task must be one of {', '.join(TASKS)}; found {task!r}")
    dt = _float_dtype(dtype, "convert")
    for name, value in (("rows_per_shard", rows_per_shard), ("n_features", n_features),
                        ("block_rows", block_rows)):
        if value is not None and (not isinstance(value, numbers.Integral) or value < 1):
            raise DataError(f"convert: {name} must be a positive integer; found {value!r}")
    if os.path.lexists(output) and not overwrite:
        raise OutputError(f"output '{output}' already exists; remove it or ask to overwrite it "
                          "(--overwrite)")
    fmt = input_format or detect_format(path)
    if fmt == "csv":
        source = _CsvSource(path, label_column, block_rows)
        if n_features is not None and n_features != source.n_features:
            raise DataError(f"'{path}' has {source.n_features} feature columns; expected "
                            f"n_features={n_features}")
    elif fmt == "libsvm":
        source = _LibsvmSource(path, n_features, block_rows)
    elif fmt == "npz":
        source = _NpzSource(path, block_rows)
    else:
        raise DataError(f"input format must be one of {', '.join(FORMATS)}; found {fmt!r}")

    # The first pass is needed unless the task is regression and n_features is known.
    scan = _LabelScan(source)
    if task != "regression" or source.n_features is None:
        for y, nos in source.labels():
            scan.update(y, nos)
        if scan.n_rows == 0:
            raise DataError(f"input '{path}' has no data rows")
    if not source.n_features:
        raise DataError(f"'{path}' has no feature index; pass n_features (--features)")
    task, n_classes, label_values = _plan_labels(scan, task, n_classes, path)

    def converted():
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

    _write(converted(), output, rows_per_shard, overwrite, scan.n_rows or None,
           n_features=source.n_features, task=task, n_classes=n_classes, dtype=dt,
           label_values=label_values, feature_names=source.feature_names)
    return open_dataset(output)

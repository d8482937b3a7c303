"""Input files for ``convert``: CSV, NumPy ``.npz`` and LIBSVM/svmlight, parsed in blocks.

Each source yields ``(X float64, y float64, numbers)`` blocks, where ``numbers`` names
the line (text) or row (npz) of each block row for error messages, and its labels alone
(``labels``) for the first pass that infers the task. Text inputs may be compressed
(``.gz``, ``.bz2``, ``.xz``) and are read in blocks of lines, so a file larger than
memory is never held whole.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
from typing import Iterator

import numpy as np

from mpisgd.errors import DataError

FORMATS = ("csv", "npz", "libsvm")
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



def open_source(fmt: str, path: str, *, label_column, n_features: int | None,
                block_rows: int):
    """The source reading ``path`` in format ``fmt`` (one of ``FORMATS``)."""
    if fmt == "csv":
        source = _CsvSource(path, label_column, block_rows)
        if n_features is not None and n_features != source.n_features:
            raise DataError(f"'{path}' has {source.n_features} feature columns; expected "
                            f"n_features={n_features}")
        return source
    if fmt == "libsvm":
        return _LibsvmSource(path, n_features, block_rows)
    if fmt == "npz":
        return _NpzSource(path, block_rows)
    raise DataError(f"input format must be one of {', '.join(FORMATS)}; found {fmt!r}")

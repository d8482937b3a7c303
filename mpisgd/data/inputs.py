"""Input files for ``convert``: CSV, NumPy ``.npz`` and LIBSVM/svmlight, parsed in blocks.

Each source yields ``(X float64, y float64, numbers)`` blocks, where ``numbers`` names
the line (text) or row (npz) of each block row for error messages, and its labels alone
(``labels``) for the first pass that infers the task. Text inputs may be compressed
(``.gz``, ``.bz2``, ``.xz``) and are read in blocks of lines, so a file larger than
memory is never held whole. A missing value (an empty CSV field, ``NA``, ``?``,
``nan``, ...: ``MISSING_TOKENS``) arrives as NaN; :mod:`mpisgd.data.missing` decides
what becomes of it, and ``column_name`` names its column as the input file does.

Labels that are not numbers are class names ("words"): a source reading numbers raises
:class:`~mpisgd.data.labels.WordLabel` at the first one, and the converter sets
``source.words`` and reads again, the labels now as text (``<U`` arrays, a missing
value spelled as above).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import itertools
import lzma
import os
from typing import Iterator

import numpy as np

from mpisgd.data.labels import (
    MISSING_TOKENS,
    WordLabel,
    label_numbers,
    numeric,
)
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


def _unquote(field: str) -> str:
    return field.strip().strip('"').strip("'")


# ---------------------------------------------------------------------------------
# Sources: each yields (X float64, y float64, numbers) blocks, where ``numbers`` names
# the line (text) or row (npz) of each block row for error messages.

class _CsvSource:
    unit = "line"
    layout = "dense"
    words = False

    def __init__(self, path: str, label_column, block_rows: int):
        self.path, self.block_rows = path, block_rows
        with contextlib.closing(_read_lines(path)) as lines:
            head = list(itertools.islice(lines, 2))
        if not head:
            raise DataError(f"input '{path}' has no data lines")
        no, line = head[0]
        self.delim = next((d for d in (",", "\t", ";") if d in line), None)
        fields = [_unquote(f) for f in line.split(self.delim)]
        self.ncols = len(fields)
        if self.ncols < 2:
            raise DataError(f"line {no} of '{path}' has {self.ncols} field; expected at least "
                            "one feature and a label")
        self.label = self._resolve_label(label_column, fields)
        header = self._is_header(fields, label_column, no,
                                 head[1][1] if len(head) > 1 else None)
        self.header_line = no if header else 0
        self.n_features = self.ncols - 1
        self.header = fields if header else None
        self.feature_names = ([f for i, f in enumerate(fields) if i != self.label]
                              if header else None)
        self._features = [j for j in range(self.ncols) if j != self.label]
        self._word = self._first_word(head[1:] if header else head[:1])

    def _first_word(self, lines: list[tuple[int, str]]) -> tuple[str, int] | None:
        """(label, line) if the first data line's label is a word: reading numbers would
        fail on its block only after the slow retries, so the first read says it."""
        for no, line in lines[:1]:
            fields = self._fields(line)
            if len(fields) == self.ncols and not numeric(_unquote(fields[self.label])):
                return _unquote(fields[self.label]), no
        return None

    def _is_header(self, fields: list[str], label_column, no: int,
                   second: str | None) -> bool:
        """Whether the first line names the columns: it does if the label column is
        given by name or any field is no number, unless only the label is, and the next
        line's too (word labels, no header: ``ambiguous``, the converter warns if the
        word occurs only there)."""
        self.ambiguous = None
        if isinstance(label_column, str) and not label_column.lstrip("-").isdigit():
            return True
        if not all(numeric(f) for i, f in enumerate(fields) if i != self.label):
            return True
        if numeric(fields[self.label]):
            return False
        nxt = second.split(self.delim) if second is not None else []
        if len(nxt) == self.ncols and not numeric(_unquote(nxt[self.label])):
            self.ambiguous = no
            return False
        return True

    def _field(self, k: int) -> str:
        return f"column '{self.header[k]}' (field {k + 1})" if self.header else f"field {k + 1}"

    def column_name(self, j: int) -> str:
        """Feature ``j`` of X as the file names it: header name and 1-based field."""
        return self._field(j + (j >= self.label))

    @property
    def label_name(self) -> str:
        return "the label " + self._field(self.label)

    def _resolve_label(self, column, fields) -> int:
        if isinstance(column, str) and not column.lstrip("-").isdigit():
            if column not in fields:
                header = fields if not all(numeric(f) for f in fields) else None
                raise DataError(f"label column '{column}' is not in the header of "
                                f"'{self.path}'; found {header or 'no header'}")
            return fields.index(column)
        col = int(column)
        if not -self.ncols <= col < self.ncols:
            raise DataError(f"label column {col} is outside the {self.ncols} columns of "
                            f"'{self.path}'")
        return col % self.ncols

    def _loadtxt(self, lines: list[str], usecols, dtype=np.float64) -> np.ndarray:
        return np.loadtxt(lines, delimiter=self.delim, comments=None, ndmin=2,
                          dtype=dtype, usecols=usecols,
                          quotechar='"' if self.delim else None)

    def _parse(self, lines: list[str], nos: np.ndarray, usecols=None) -> np.ndarray:
        try:
            arr = self._loadtxt(lines, usecols)
        except ValueError:
            # The fast parser knows no missing-value spellings: a block holding one is
            # parsed again with them written as nan (only such blocks pay for it).
            try:
                arr = self._loadtxt([self._missing_as_nan(line) for line in lines], usecols)
            except ValueError as e:
                self._find_bad_line(lines, nos)
                raise DataError(f"lines {nos[0]}-{nos[-1]} of '{self.path}': {e}") from e
        if usecols is None and arr.shape[1] != self.ncols:
            self._find_bad_line(lines, nos)
        return arr

    def _missing_as_nan(self, line: str) -> str:
        fields = line.split(self.delim)
        return (self.delim or " ").join(
            "nan" if f.strip().strip('"').strip("'").lower() in MISSING_TOKENS else f
            for f in fields)

    def _find_bad_line(self, lines: list[str], nos: np.ndarray) -> None:
        """Re-parse slowly to name the first bad line; the fast parser only says 'bad'."""
        for line, no in zip(lines, nos):
            fields = self._fields(line)
            if len(fields) != self.ncols:
                raise DataError(f"line {no} of '{self.path}' has {len(fields)} fields; "
                                f"expected {self.ncols} like the first line (ragged row)")
            for i, f in enumerate(fields):
                text = f.strip().strip('"')
                if (i == self.label and self.words) or numeric(text):
                    continue
                if i == self.label:
                    raise WordLabel(self, _unquote(f), no)
                raise DataError(f"line {no} of '{self.path}': field {i + 1} is {f!r}, "
                                "which is not a number")

    def _fields(self, line: str) -> list[str]:
        """A line's fields: split at the delimiter, or parsed if a quoted field holds it."""
        fields = line.split(self.delim)
        if len(fields) != self.ncols and '"' in line and self.delim:
            with contextlib.suppress(ValueError):
                fields = self._loadtxt([line], None, str)[0].tolist()
        return fields

    def _check_ragged(self, lines: list[str], nos: np.ndarray) -> None:
        """Rows with more fields than the first (reading some columns does not see them)."""
        for line, no in zip(lines, nos):
            if self.delim and line.count(self.delim) + 1 == self.ncols:
                continue   # counting is cheap; only a line that counts wrong is split
            if len(self._fields(line)) != self.ncols:
                self._find_bad_line([line], np.array([no]))

    def _label_texts(self, lines: list[str], nos: np.ndarray) -> np.ndarray:
        try:
            texts = self._loadtxt(lines, [self.label], str)[:, 0]
        except ValueError as e:
            self._find_bad_line(lines, nos)
            raise DataError(f"lines {nos[0]}-{nos[-1]} of '{self.path}': {e}") from e
        return np.char.strip(np.char.strip(texts), "\"'")

    def labels(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._word and not self.words:
            raise WordLabel(self, *self._word)
        for lines, nos in _line_blocks(self.path, self.block_rows, self.header_line):
            if self.words:
                yield self._label_texts(lines, nos), nos
            else:
                yield self._parse(lines, nos, usecols=[self.label])[:, 0], nos

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if self._word and not self.words:
            raise WordLabel(self, *self._word)
        for lines, nos in _line_blocks(self.path, self.block_rows, self.header_line):
            if self.words:   # the features as numbers, the labels as text
                self._check_ragged(lines, nos)
                yield self._parse(lines, nos, self._features), self._label_texts(lines, nos), nos
                continue
            arr = self._parse(lines, nos)
            yield np.delete(arr, self.label, axis=1), arr[:, self.label], nos


class _NpzSource:
    unit = "row"
    layout = "dense"
    feature_names = None
    label_name = "y"
    words = False

    def __init__(self, path: str, block_rows: int):
        self.path, self.block_rows = path, block_rows
        try:
            with np.load(path, allow_pickle=False) as z:
                names = list(z.keys())
                if "X" not in names or "y" not in names:
                    raise DataError(f"input '{path}' has arrays {names}; expected arrays "
                                    "'X' (rows x features) and 'y' (rows)")
                self.X, self.y = z["X"], _npz_labels(z, path)
        except DataError:
            raise
        except Exception as e:  # zipfile, pickle and OS errors all mean "not a usable npz"
            raise DataError(f"input '{path}' is not a readable .npz file: {e}") from e
        if self.X.ndim != 2 or self.X.dtype.kind not in "biuf":
            raise DataError(f"X in '{path}' must be a 2-D numeric array; found shape "
                            f"{self.X.shape} dtype {self.X.dtype}")
        if self.y.ndim != 1 or self.y.dtype.kind not in "biufU":
            raise DataError(f"y in '{path}' must be a 1-D array of numbers or strings; found "
                            f"shape {self.y.shape} dtype {self.y.dtype}")
        if self.y.shape[0] != self.X.shape[0]:
            raise DataError(f"shape mismatch: X has {self.X.shape[0]} rows but y has "
                            f"{self.y.shape[0]} in '{path}'")
        self.n_features = self.X.shape[1]

    def column_name(self, j: int) -> str:
        return f"column {j} of X"

    def _labels(self, a: int, b: int) -> np.ndarray:
        y, nos = self.y[a:b], np.arange(a, b)
        if self.words:
            return y
        return label_numbers(y, self, nos) if y.dtype.kind == "U" else y.astype(np.float64)

    def labels(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield self._labels(0, len(self.y)), np.arange(len(self.y))

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for a in range(0, len(self.y), self.block_rows):
            b = min(len(self.y), a + self.block_rows)
            yield self.X[a:b], self._labels(a, b), np.arange(a, b)


def _npz_labels(z, path: str) -> np.ndarray:
    """The npz's y; strings as str (bytes decoded as UTF-8)."""
    return labels_array(lambda: z["y"], f"y in '{path}'")


def labels_array(load, what: str) -> np.ndarray:
    """The labels ``load()`` returns, strings as str (bytes decoded as UTF-8). An object
    array is stored pickled, and unpickling runs code: it is refused, naming the
    conversion to strings."""
    try:
        y = load()
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise
        raise DataError(f"{what} is an object array (pickled); mpisgd does not "
                        "unpickle input files, as loading a pickle can run code. Save the "
                        "labels as strings or numbers instead: np.savez(path, X=X, "
                        "y=np.asarray(y, dtype=str))") from None
    return np.char.decode(y, "utf-8") if y.dtype.kind == "S" else y

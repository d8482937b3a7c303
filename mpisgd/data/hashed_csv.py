"""A CSV file through the hashing trick: every column a feature id in [0, 2^bits).

A numeric column (one whose fields are all numbers or missing) keeps its values at the
id of its name; any other column is categorical, and each of its values becomes the
feature ``name=value`` with value 1 (``categorical`` makes a column of numbers, codes
or ids, categorical too). Ids are the low bits of a seeded MurmurHash3
(:mod:`mpisgd.data.hashing`); features whose ids collide in a row add up. The column
kinds come from a first pass over the file (with the labels'), then the blocks of rows
are hashed, so memory holds one block whatever the file's size.

Missing values (an empty field, ``NA``, ...) are handled here, before the rows are
hashed (a hashed id no longer names its column): ``error`` names the line and column,
``drop`` leaves the row out and ``zero`` the feature.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Iterator

import numpy as np

from mpisgd.data.csr import CsrBlock
from mpisgd.data.hashing import check_bits, hashed_ids
from mpisgd.data.inputs import _line_blocks, _read_lines, _unquote
from mpisgd.data.labels import is_number, label_numbers, missing_text, numeric
from mpisgd.errors import DataError

_ADVICE = "drop such rows or leave the features out: --missing drop|zero"


class HashedCsvSource:
    """A CSV file's rows as CSR blocks of hashed features (``convert(hash_features=)``)."""

    unit = "line"
    layout = "csr"
    feature_names = None
    words = False
    drop = False
    missing = "error"   # the converter's --missing (mean is refused before)

    def __init__(self, path: str, label_column, block_rows: int, bits: int, seed: int,
                 categorical=()):
        self.path, self.block_rows = path, block_rows
        self.bits, self.seed = check_bits(bits), int(seed)
        self.n_features = 1 << self.bits
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
        self.label = self._resolve(label_column, fields, "label column")
        second = [_unquote(f) for f in head[1][1].split(self.delim)] if len(head) > 1 else None
        header = _is_header(fields, second, label_column)
        self.header_line = no if header else 0
        self.names = fields if header else [str(j) for j in range(self.ncols)]
        self.header = header
        self._features = [j for j in range(self.ncols) if j != self.label]
        forced = {self._resolve(c, fields if header else [], "categorical column")
                  for c in categorical}
        if self.label in forced:
            raise DataError(f"--categorical names the label column {self._field(self.label)}")
        self._forced = np.array([j in forced for j in self._features])
        self.kinds: np.ndarray | None = None   # per feature column: True if categorical
        self._numeric_ids = hashed_ids([self.names[j] for j in self._features], self.seed,
                                       self.bits)
        self.dropped = self.filled = 0

    def _resolve(self, column, fields: list[str], what: str) -> int:
        if isinstance(column, str) and not column.lstrip("-").isdigit():
            if column not in fields:
                raise DataError(f"{what} '{column}' is not in the header of '{self.path}'; "
                                f"found {fields or 'no header'}")
            return fields.index(column)
        col = int(column)
        if not -self.ncols <= col < self.ncols:
            raise DataError(f"{what} {col} is outside the {self.ncols} columns of "
                            f"'{self.path}'")
        return col % self.ncols

    def _field(self, k: int) -> str:
        return f"column '{self.names[k]}' (field {k + 1})" if self.header else f"field {k + 1}"

    def column_name(self, j: int) -> str:
        return f"hashed feature {j}"

    @property
    def label_name(self) -> str:
        return "the label " + self._field(self.label)

    def _fields(self, lines: list[str], nos: np.ndarray) -> np.ndarray:
        """A block's fields as text (rows x columns), stripped of spaces and quotes."""
        try:
            a = np.loadtxt(lines, delimiter=self.delim, comments=None, ndmin=2, dtype=str,
                           quotechar='"' if self.delim else None)
        except ValueError:
            a = None
        if a is None or a.shape[1] != self.ncols:
            for line, no in zip(lines, nos):
                n = len(line.split(self.delim))
                if n != self.ncols:
                    raise DataError(f"line {no} of '{self.path}' has {n} fields; expected "
                                    f"{self.ncols} like the first line (ragged row)")
            raise DataError(f"lines {nos[0]}-{nos[-1]} of '{self.path}' cannot be split "
                            f"into {self.ncols} fields (a quote not closed?)")
        return np.char.strip(np.char.strip(a), "\"'")

    def _blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for lines, nos in _line_blocks(self.path, self.block_rows, self.header_line):
            yield self._fields(lines, nos), nos

    def _labels(self, fields: np.ndarray, nos: np.ndarray) -> np.ndarray:
        texts = fields[:, self.label]
        return texts if self.words else label_numbers(texts, self, nos)

    def _update_kinds(self, fields: np.ndarray, kinds: np.ndarray) -> None:
        """Mark the columns holding a field that is no number (nor missing) categorical."""
        for i, j in enumerate(self._features):
            if kinds[i]:
                continue
            col = fields[:, j]
            try:
                col.astype(np.float64)
                continue
            except ValueError:
                pass
            kinds[i] = any(not numeric(v) for v in col.tolist())

    def labels(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The labels (of the rows kept, when ``drop``); learns the columns' kinds."""
        kinds = self._forced.copy()
        for fields, nos in self._blocks():
            self._update_kinds(fields, kinds)
            y = self._labels(fields, nos)
            if self.drop:
                gaps = missing_text(fields[:, self._features]).any(axis=1)
                gaps |= missing_text(y) if y.dtype.kind == "U" else np.isnan(y)
                y, nos = y[~gaps], nos[~gaps]
            yield y, nos
        self.kinds = kinds

    def _learn_kinds(self) -> None:
        kinds = self._forced.copy()
        for fields, _ in self._blocks():
            self._update_kinds(fields, kinds)
        self.kinds = kinds

    def blocks(self) -> Iterator[tuple[CsrBlock, np.ndarray, np.ndarray]]:
        if self.kinds is None:
            self._learn_kinds()
        self.dropped = self.filled = 0
        for fields, nos in self._blocks():
            y = self._labels(fields, nos)
            rows, cols, vals, gaps = self._entries(fields, nos)
            keep = np.ones(len(nos), dtype=bool)
            if gaps.any():
                keep = self._missing(gaps, nos)
                if not keep.all():
                    kept = keep[rows]
                    rows = (np.cumsum(keep) - 1)[rows[kept]]
                    cols, vals = cols[kept], vals[kept]
            block, repeat = CsrBlock.from_entries(int(keep.sum()), rows, cols, vals)
            block = block.sum_repeats(repeat)
            yield block.drop_entries(block.values == 0), y[keep], nos[keep]

    def _missing(self, gaps: np.ndarray, nos: np.ndarray) -> np.ndarray:
        """The rows kept under the missing-value policy (``gaps``: rows x feature columns)."""
        if self.missing == "drop":
            keep = ~gaps.any(axis=1)
            self.dropped += int(np.count_nonzero(~keep))
            return keep
        if self.missing == "zero":
            self.filled += int(np.count_nonzero(gaps))
            return np.ones(len(nos), dtype=bool)
        row, i = np.argwhere(gaps)[0]
        raise DataError(f"line {nos[row]} of '{self.path}' has a missing value: "
                        f"{self._field(self._features[i])} is missing "
                        f"({int(gaps.sum())} missing value(s) in this block of {len(nos)} "
                        f"rows); {_ADVICE}")

    def _entries(self, fields: np.ndarray, nos: np.ndarray):
        """(row, id, value) of the block's features, and where its fields are missing."""
        parts, gaps = [], np.zeros((len(nos), len(self._features)), dtype=bool)
        for i, j in enumerate(self._features):
            col = fields[:, j]
            gaps[:, i] = missing_text(col)
            if self.kinds[i]:
                uniq, inv = np.unique(col, return_inverse=True)
                ids = hashed_ids([f"{self.names[j]}={u}" for u in uniq.tolist()], self.seed,
                                 self.bits)[inv.reshape(-1)]
                rows = np.flatnonzero(~gaps[:, i])
                parts.append((rows, ids[rows], np.ones(len(rows))))
                continue
            vals = self._numbers(col, gaps[:, i], nos, j)
            rows = np.flatnonzero(~gaps[:, i] & (vals != 0))
            parts.append((rows, np.full(len(rows), self._numeric_ids[i]), vals[rows]))
        rows, cols, vals = (np.concatenate(p) if parts else np.zeros(0)
                            for p in zip(*parts))
        return rows.astype(np.int64), cols.astype(np.int64), vals.astype(np.float64), gaps

    def _numbers(self, col: np.ndarray, gaps: np.ndarray, nos: np.ndarray, j: int):
        try:
            vals = np.where(gaps, "nan", col).astype(np.float64)
        except ValueError:
            k = next(k for k, v in enumerate(col.tolist()) if not gaps[k] and not is_number(v))
            raise DataError(f"line {nos[k]} of '{self.path}': {self._field(j)} holds "
                            f"{col[k]!r}, but only numbers in the first pass over the file; "
                            "did it change?") from None
        bad = ~np.isfinite(vals) & ~gaps
        if bad.any():
            k = int(np.argmax(bad))
            raise DataError(f"line {nos[k]} of '{self.path}' has a non-finite value "
                            f"({col[k]}) in {self._field(j)}; expected finite numbers")
        return vals


def _is_header(fields: list[str], second: list[str] | None, label_column) -> bool:
    """Whether the first line names the columns: it does if the label column is given by
    name, if one of its fields is a word where the next line has a number, or if it
    holds words only (a file of words only needs a header)."""
    if isinstance(label_column, str) and not label_column.lstrip("-").isdigit():
        return True
    if second is not None and any(not numeric(a) and is_number(b)
                                  for a, b in zip(fields, second)):
        return True
    return not any(is_number(f) for f in fields)

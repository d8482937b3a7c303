"""Inputs of ``convert`` that are sparse by nature (LIBSVM/svmlight, SciPy sparse
``.npz``), the views that turn a source's blocks into the output's layout, and
:func:`open_input`, which opens any input.

A sparse source yields ``(CsrBlock, y, numbers)`` blocks (``layout = "csr"``), a dense one
``(X, y, numbers)`` (:mod:`mpisgd.data.inputs`). :class:`DenseView` hands a sparse
source's rows over as dense blocks of bounded memory, :class:`SparseView` a dense
source's as CSR. A missing value arrives as a NaN value; a CSR source's ``labels()``
leaves out the rows that ``drop`` (``--missing drop``) will leave out.
"""

from __future__ import annotations

import re
import zipfile
from typing import Iterator

import numpy as np

from mpisgd.data.csr import CsrBlock
from mpisgd.data.hashed_csv import HashedCsvSource
from mpisgd.data.inputs import FORMATS, _CsvSource, _line_blocks, _NpzSource, labels_array
from mpisgd.data.labels import WordLabel, is_number, label_numbers, missing_text
from mpisgd.data.missing import rows_kept
from mpisgd.data.read import default_block_rows
from mpisgd.errors import DataError

# Two colons in one whitespace-separated token.
_TWO_COLONS = re.compile(r":[^\s:]*:")
# SciPy's sparse formats, by the 'format' array of a save_npz file.
SCIPY_FORMATS = ("csr", "csc", "coo")


def _kept(block: CsrBlock, y: np.ndarray) -> np.ndarray:
    """Rows without a missing (NaN) value or label."""
    keep = ~(missing_text(y) if y.dtype.kind == "U" else np.isnan(y))
    keep[block.row_of_entries()[np.isnan(block.values)]] = False
    return keep


class LibsvmSource:
    """LIBSVM/svmlight text, ``label index:value ...`` per line, in blocks of lines."""

    unit = "line"
    layout = "csr"
    feature_names = None
    label_name = "the label"
    words = False
    drop = False

    def __init__(self, path: str, n_features: int | None, block_rows: int,
                 zero_based: bool = False):
        self.path, self.block_rows, self.n_features = path, block_rows, n_features
        # scikit-learn's dump_svmlight_file(zero_based=True) numbers features from 0
        self.base = 0 if zero_based else 1

    def column_name(self, j: int) -> str:
        return f"feature index {j + self.base}"

    def _parse(self, lines: list[str], nos: np.ndarray):
        """Labels, and (row, 0-based column, value) of the entries; NumPy parses a
        block's numbers at once, and a block it refuses is parsed again token by token
        to name the bad line."""
        try:
            return self._parse_fast(lines)
        except ValueError:
            return self._parse_slow(lines, nos)

    def _parse_fast(self, lines: list[str]):
        labels, bodies = [], []
        for line in lines:
            parts = line.split("#", 1)[0].split(None, 1)
            labels.append(parts[0] if parts else ":")
            bodies.append(parts[1] if len(parts) > 1 else "")
        text = "\n".join(bodies)
        counts = [b.count(":") for b in bodies]
        # as many tokens as colons and none with two: one colon in every token
        if "qid:" in text or len(text.split()) != sum(counts) or _TWO_COLONS.search(text) \
                or any(":" in t for t in labels):
            raise ValueError("not index:value pairs")
        pairs = np.fromstring(text.replace(":", " "), sep=" ")   # ValueError if not numbers
        if len(pairs) != 2 * sum(counts):
            raise ValueError("not index:value pairs")
        cols = pairs[0::2]
        if not np.array_equal(cols, np.floor(cols)) or (cols.size and cols.max() >= 2 ** 53):
            raise ValueError("not integer indices")
        cols = cols.astype(np.int64) - self.base
        if cols.size and (cols.min() < 0 or (self.n_features is not None
                                             and cols.max() >= self.n_features)):
            raise ValueError("index")
        y = np.array(labels, dtype=str)
        y = y if self.words else y.astype(np.float64)
        return y, np.repeat(np.arange(len(lines)), counts), cols, pairs[1::2].copy()

    def _parse_slow(self, lines: list[str], nos: np.ndarray):
        y: list = []
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        for r, (line, no) in enumerate(zip(lines, nos)):
            tokens = line.split("#", 1)[0].split()
            label = tokens[0] if tokens else ""
            if not label or ":" in label:
                raise DataError(f"line {no} of '{self.path}': expected a label before the "
                                f"features; found {label!r}")
            if self.words:
                y.append(label)
            elif is_number(label):
                y.append(float(label))
            else:
                raise WordLabel(self, label, no)
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
                self._check_index(i, no)
                rows.append(r)
                cols.append(i - self.base)
                vals.append(v)
        y = np.array(y, dtype=str) if self.words else np.array(y, dtype=np.float64)
        return y, np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64), \
            np.array(vals, dtype=np.float64)

    def _check_index(self, i: int, no) -> None:
        if i < self.base:
            raise DataError(
                f"line {no} of '{self.path}': feature index {i}; LIBSVM indices are "
                "1-based" + (" (a file written 0-based, as by scikit-learn's "
                             "dump_svmlight_file(zero_based=True), converts with "
                             "--zero-based)" if i == 0 else ""))
        if self.n_features is not None and i - self.base >= self.n_features:
            raise DataError(f"line {no} of '{self.path}': feature index {i} is "
                            f"beyond n_features={self.n_features}")

    def _block(self, lines: list[str], nos: np.ndarray):
        y, rows, cols, vals = self._parse(lines, nos)
        block, repeat = CsrBlock.from_entries(len(lines), rows, cols, vals)
        if repeat.any():
            k = int(np.argmax(repeat))
            row = int(block.row_of_entries()[k])
            raise DataError(f"line {nos[row]} of '{self.path}' lists feature index "
                            f"{int(block.indices[k]) + self.base} twice; a LIBSVM line "
                            "lists each feature once")
        return block.drop_entries(block.values == 0), y

    def labels(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        found = 0
        for lines, nos in _line_blocks(self.path, self.block_rows):
            if self.drop:
                block, y = self._block(lines, nos)
                cols = block.indices
                keep = _kept(block, y)
                y, nos = y[keep], nos[keep]
            else:   # the width and the labels; the rows are checked by blocks()
                y, _, cols, _ = self._parse(lines, nos)
            if cols.size:
                found = max(found, int(cols.max()) + 1)
            yield y, nos
        self.n_features = self.n_features or found

    def blocks(self) -> Iterator[tuple[CsrBlock, np.ndarray, np.ndarray]]:
        for lines, nos in _line_blocks(self.path, self.block_rows):
            block, y = self._block(lines, nos)
            yield block, y, nos


class ScipyNpzSource:
    """A ``scipy.sparse.save_npz`` file (CSR, CSC or COO), read with NumPy alone: its
    arrays ``format``, ``shape`` and ``indptr``/``indices``/``data`` (``row``/``col``/
    ``data`` for COO); the labels from ``labels`` (a ``.npy``) or a ``y`` array."""

    unit = "row"
    layout = "csr"
    feature_names = None
    label_name = "y"
    words = False
    drop = False

    def __init__(self, path: str, block_rows: int, labels: str | None,
                 n_features: int | None):
        self.path, self.block_rows = path, block_rows
        try:
            with np.load(path, allow_pickle=False) as z:
                self.matrix, n_rows, width = _scipy_matrix(z, path)
                y = labels_array(lambda: z["y"], f"y in '{path}'") if "y" in z else None
        except DataError:
            raise
        except Exception as e:  # zipfile, pickle and OS errors all mean "not a usable npz"
            raise DataError(f"input '{path}' is not a readable .npz file: {e}") from e
        if labels is not None:
            y = _npy_labels(labels)
        if y is None:
            raise DataError(f"'{path}' is a SciPy sparse matrix without labels; give them "
                            "as a .npy file of one label per row (--labels FILE.npy)")
        if y.ndim != 1 or y.shape[0] != n_rows or y.dtype.kind not in "biufU":
            raise DataError(f"the labels of '{path}' must be a 1-D array of numbers or "
                            f"strings, one per row ({n_rows}); found shape {y.shape} dtype "
                            f"{y.dtype}")
        if n_features is not None and n_features < width:
            raise DataError(f"'{path}' has {width} columns; n_features={n_features} is fewer")
        self.y, self.n_features = y, n_features or width

    def column_name(self, j: int) -> str:
        return f"column {j}"

    def _labels(self, a: int, b: int) -> np.ndarray:
        y, nos = self.y[a:b], np.arange(a, b)
        if self.words:
            return y
        return label_numbers(y, self, nos) if y.dtype.kind == "U" else y.astype(np.float64)

    def _rows(self, a: int, b: int) -> tuple[CsrBlock, np.ndarray, np.ndarray]:
        block, y = self.matrix[a:b], self._labels(a, b)
        block, repeat = CsrBlock.from_entries(len(block), block.row_of_entries(),
                                              block.indices, block.values)
        block = block.sum_repeats(repeat)   # as scipy.sparse adds repeated entries
        return block.drop_entries(block.values == 0), y, np.arange(a, b)

    def labels(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for block, y, nos in self.blocks():
            keep = _kept(block, y) if self.drop else slice(None)
            yield y[keep], nos[keep]

    def blocks(self) -> Iterator[tuple[CsrBlock, np.ndarray, np.ndarray]]:
        for a in range(0, len(self.y), self.block_rows):
            yield self._rows(a, min(len(self.y), a + self.block_rows))


def _scipy_matrix(z, path: str) -> tuple[CsrBlock, int, int]:
    """The matrix of a save_npz file as one CsrBlock (rows in order), rows, columns."""
    fmt = z["format"].item()
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    if fmt not in SCIPY_FORMATS:
        raise DataError(f"'{path}' holds a SciPy '{fmt}' matrix; mpisgd reads "
                        f"{', '.join(SCIPY_FORMATS)}: save matrix.tocsr() instead")
    n_rows, width = (int(v) for v in z["shape"])
    data = z["data"]
    if data.dtype.kind not in "biuf":
        raise DataError(f"the data of '{path}' has dtype {data.dtype}; expected numbers")
    if fmt == "coo":
        rows, cols = z["row"].astype(np.int64), z["col"].astype(np.int64)
    else:
        indptr, indices = z["indptr"].astype(np.int64), z["indices"].astype(np.int64)
        if len(indptr) != (n_rows if fmt == "csr" else width) + 1 or indptr[-1] != len(data):
            raise DataError(f"'{path}': indptr does not fit shape {(n_rows, width)} and "
                            f"{len(data)} stored values (a damaged file)")
        outer = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        rows, cols = (outer, indices) if fmt == "csr" else (indices, outer)
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows or cols.min() < 0
                      or cols.max() >= width):
        raise DataError(f"'{path}': an entry lies outside the matrix's shape {(n_rows, width)}")
    order = np.argsort(rows, kind="stable")   # rows in order; columns sorted per block
    counts = np.bincount(rows, minlength=n_rows)
    block = CsrBlock(np.concatenate([[0], np.cumsum(counts)]), cols[order],
                     data[order].astype(np.float64))
    return block, n_rows, width


def _npy_labels(path: str) -> np.ndarray:
    try:
        return labels_array(lambda: np.load(path, allow_pickle=False), f"labels file '{path}'")
    except DataError:
        raise
    except Exception as e:  # OS errors and a file that is no .npy
        raise DataError(f"cannot read labels file '{path}' (a .npy of one label per "
                        f"row): {e}") from e


class DenseView:
    """A CSR source's rows as dense blocks of about 32 MiB (float64) at most."""

    layout = "dense"

    def __init__(self, source):
        self.__dict__["source"] = source

    def __getattr__(self, name):
        return getattr(self.source, name)

    def __setattr__(self, name, value):
        setattr(self.source, name, value)

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for block, y, nos in self.source.blocks():
            step = default_block_rows(self.source.n_features)
            for a in range(0, len(y), step):
                b = min(len(y), a + step)
                yield block[a:b].toarray(self.source.n_features), y[a:b], nos[a:b]


class SparseView(DenseView):
    """A dense source's rows as CSR blocks (its zeros left out, NaN kept as missing)."""

    layout = "csr"

    def __init__(self, source):
        super().__init__(source)
        # The view's own: a dense source's labels() does not see its rows' values.
        self.__dict__["drop"] = False

    def __setattr__(self, name, value):
        if name == "drop":
            self.__dict__["drop"] = value
        else:
            setattr(self.source, name, value)

    def labels(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if not self.drop:
            yield from self.source.labels()
            return
        for X, y, nos in self.source.blocks():
            keep = rows_kept(X, y)
            yield y[keep], nos[keep]

    def blocks(self) -> Iterator[tuple[CsrBlock, np.ndarray, np.ndarray]]:
        for X, y, nos in self.source.blocks():
            yield CsrBlock.from_dense(X), y, nos


def open_input(fmt: str, path: str, *, label_column, n_features: int | None,
               block_rows: int, zero_based: bool = False, hash_bits: int | None = None,
               hash_seed: int = 0, categorical=None, labels: str | None = None):
    """The source reading ``path`` in format ``fmt`` (one of ``FORMATS``); an ``.npz``
    holding a SciPy sparse matrix is read as one. ``zero_based``: LIBSVM indices start at
    0; ``hash_bits``: a CSV's columns hashed into 2^bits features (``categorical`` names
    columns hashed as words even when they hold numbers); ``labels``: a .npy of the labels
    of a SciPy matrix."""
    if fmt not in FORMATS:
        raise DataError(f"input format must be one of {', '.join(FORMATS)}; found {fmt!r}")
    if hash_bits is not None and fmt != "csv":
        raise DataError(f"--hash-features hashes the columns of a CSV file; '{path}' is "
                        f"{fmt}")
    if categorical and hash_bits is None:
        raise DataError("--categorical names columns to hash: give --hash-features BITS too")
    if fmt == "csv" and hash_bits is not None:
        if n_features is not None and n_features != 1 << hash_bits:
            raise DataError(f"hashing into {hash_bits} bits makes {1 << hash_bits} features; "
                            f"n_features={n_features} disagrees")
        return HashedCsvSource(path, label_column, block_rows, hash_bits, hash_seed,
                               categorical or ())
    if fmt == "npz" and _is_scipy(path):
        return ScipyNpzSource(path, block_rows, labels, n_features)
    if labels is not None:
        raise DataError(f"--labels gives the labels of a SciPy sparse .npz; '{path}' holds "
                        "its own")
    if fmt == "csv":
        source = _CsvSource(path, label_column, block_rows)
        if n_features is not None and n_features != source.n_features:
            raise DataError(f"'{path}' has {source.n_features} feature columns; expected "
                            f"n_features={n_features}")
        return source
    if fmt == "libsvm":
        return LibsvmSource(path, n_features, block_rows, zero_based)
    return _NpzSource(path, block_rows)


def _is_scipy(path: str) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return "format" in z and "shape" in z and "X" not in z
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False   # not a readable npz: the dense reader says so, naming the file

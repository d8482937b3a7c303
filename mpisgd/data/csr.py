"""The CSR (compressed sparse row) shard layout: its rules and blocks of rows.

A CSR shard holds ``indptr`` (int64, rows + 1), ``indices`` (uint32 when every feature
id fits, else int64; sorted and unique within a row), ``values`` (float32/float64) and
``y``, with the dense shard's attributes plus ``layout = "csr"`` and ``nnz``
(``docs/data-format.md``). This module checks a shard's metadata (:func:`csr_meta`, for
``open_dataset``) and blocks of rows (:func:`check_csr_block`, on every block read or
written), and holds :class:`CsrBlock`, the rows the converters, writers and readers pass
around. Reading is :mod:`mpisgd.data.csr_read`, writing :mod:`mpisgd.data.csr_write`.
"""

from __future__ import annotations

import numbers

import h5py
import numpy as np

from mpisgd.errors import DataError

LAYOUTS = ("dense", "csr")
# Feature ids below this fit uint32 indices (hashed features use all 32 bits).
UINT32_FEATURES = 1 << 32


def require_dense(info, doing: str) -> None:
    """DataError unless the dataset ``info`` (a DatasetInfo) is dense; ``doing`` ends the
    message ("sparse datasets are not <doing>"). Identical on every rank that opened it."""
    if info.layout != "dense":
        raise DataError(f"dataset '{info.path}' is sparse (CSR layout, {info.nnz} non-zeros "
                        f"in {info.n_rows} rows x {info.n_features} features); sparse "
                        f"datasets are not {doing}. Convert the input dense (`mpisgd data "
                        "convert INPUT OUT --dense`) if it fits in memory")


def index_dtype(n_features: int) -> np.dtype:
    """The dtype of ``indices``: uint32 when every id fits (half the bytes), else int64."""
    return np.dtype(np.uint32 if n_features <= UINT32_FEATURES else np.int64)


class CsrBlock:
    """Consecutive rows in CSR form: ``indptr`` (int64, from 0, rows + 1), ``indices``
    and ``values`` (nnz each). Sliced by rows like an array (``block[a:b]``, or an index
    array of rows), so the writers treat it as they treat a dense block of X."""

    __slots__ = ("indptr", "indices", "values")

    def __init__(self, indptr, indices, values):
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.indices, self.values = np.asarray(indices), np.asarray(values)

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes + self.values.nbytes

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def __getitem__(self, rows) -> CsrBlock:
        if isinstance(rows, slice):
            a, b, step = rows.indices(len(self))
            if step == 1:
                b = max(a, b)
                lo, hi = self.indptr[a], self.indptr[b]
                return CsrBlock(self.indptr[a:b + 1] - lo, self.indices[lo:hi],
                                self.values[lo:hi])
            rows = np.arange(a, b, step)
        return self.take(np.asarray(rows))

    def take(self, rows: np.ndarray) -> CsrBlock:
        """The rows ``rows`` (integer positions or a boolean mask), in that order."""
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        starts, lengths = self.indptr[rows], np.diff(self.indptr)[rows]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # position of every kept non-zero: its row's start plus its place in the row
        pos = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return CsrBlock(indptr, self.indices[pos], self.values[pos])

    def row_of_entries(self) -> np.ndarray:
        """The row (within the block) of every non-zero."""
        return np.repeat(np.arange(len(self)), np.diff(self.indptr))

    def drop_entries(self, mask: np.ndarray) -> CsrBlock:
        """The block without the non-zeros where ``mask`` is True (rows stay)."""
        keep = ~mask
        counts = np.bincount(self.row_of_entries()[keep], minlength=len(self))
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return CsrBlock(indptr, self.indices[keep], self.values[keep])

    def toarray(self, n_features: int, dtype=np.float64) -> np.ndarray:
        X = np.zeros((len(self), n_features), dtype=dtype)
        X[self.row_of_entries(), self.indices.astype(np.int64)] = self.values
        return X

    @classmethod
    def from_dense(cls, X: np.ndarray) -> CsrBlock:
        """The non-zeros of a dense block (NaN counts as one: a missing value stays)."""
        rows, cols = np.nonzero(X)
        counts = np.bincount(rows, minlength=X.shape[0])
        return cls(np.concatenate([[0], np.cumsum(counts)]), cols.astype(np.int64),
                   X[rows, cols])

    @classmethod
    def from_entries(cls, n_rows: int, rows, cols, vals) -> tuple[CsrBlock, np.ndarray]:
        """Rows from (row, column, value) entries in any order, sorted by column within
        each row. Returns the block and a mask of the entries that repeat the column
        of the entry before them in their row (the caller sums or refuses them)."""
        rows = np.asarray(rows, dtype=np.int64)
        cols, vals = np.asarray(cols, dtype=np.int64), np.asarray(vals)
        same = rows[1:] == rows[:-1]
        # entries as text files list them (rows in order, columns rising) need no sort
        if not (np.all(rows[1:] >= rows[:-1]) and not np.any(same & (cols[1:] <= cols[:-1]))):
            order = np.lexsort((cols, rows))
            rows, cols, vals = rows[order], cols[order], vals[order]
            same = rows[1:] == rows[:-1]
        repeat = np.zeros(len(cols), dtype=bool)
        repeat[1:] = same & (cols[1:] == cols[:-1])
        counts = np.bincount(rows, minlength=n_rows)
        return cls(np.concatenate([[0], np.cumsum(counts)]), cols, vals), repeat

    def sum_repeats(self, repeat: np.ndarray) -> CsrBlock:
        """Repeated (row, column) entries (``repeat`` from :meth:`from_entries`) added
        into the first of each run."""
        if not repeat.any():
            return self
        first = np.flatnonzero(~repeat)
        values = np.add.reduceat(self.values, first) if len(first) else self.values[:0]
        counts = np.bincount(self.row_of_entries()[first], minlength=len(self))
        return CsrBlock(np.concatenate([[0], np.cumsum(counts)]), self.indices[first], values)


def concat(blocks: list[CsrBlock]) -> CsrBlock:
    """The rows of ``blocks`` one after the other."""
    if not blocks:
        return CsrBlock(np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0))
    ends = np.cumsum([0] + [b.nnz for b in blocks[:-1]])
    indptr = np.concatenate([blocks[0].indptr[:1]] +
                            [b.indptr[1:] + e for b, e in zip(blocks, ends)])
    return CsrBlock(indptr, np.concatenate([b.indices for b in blocks]),
                    np.concatenate([b.values for b in blocks]))


# ---------------------------------------------------------------------------------
# Checks of a block's structure, shared by the readers and the writers.

def check_csr_block(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                    n_features: int, where: str, first_row: int, *,
                    check_values: bool = True) -> None:
    """Raise DataError unless ``indptr`` (as stored: it need not start at 0) is
    non-decreasing and spans ``indices``, every index is in [0, n_features) and sorted
    without repeats within its row, and (``check_values``) every value is finite.
    ``where`` names the shard; ``first_row`` is the global row of the block's first."""
    steps = np.diff(indptr)
    if steps.size and steps.min() < 0:
        row = int(np.argmax(steps < 0))
        raise DataError(f"{where}: indptr decreases at row {first_row + row} "
                        f"({int(indptr[row])} then {int(indptr[row + 1])}); indptr must be "
                        "non-decreasing (a damaged or wrongly written CSR shard)")
    if len(indices) != int(indptr[-1] - indptr[0]) or len(values) != len(indices):
        raise DataError(f"{where}: rows [{first_row}, {first_row + len(steps)}) span "
                        f"{int(indptr[-1] - indptr[0])} non-zeros by indptr but "
                        f"{len(indices)} indices and {len(values)} values")
    if len(indices) == 0:
        return
    idx = indices.astype(np.int64, copy=False)
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n_features:
        k = int(np.argmax((idx < 0) | (idx >= n_features)))
        raise DataError(f"{where}: feature index {int(idx[k])} in row "
                        f"{first_row + _row_of(indptr, k)} is outside 0..{n_features - 1} "
                        f"(n_features={n_features})")
    bad = np.diff(idx) <= 0
    starts = indptr[1:-1] - indptr[0]
    starts = starts[(starts > 0) & (starts < len(idx))]
    bad[starts - 1] = False   # a new row may start at any index
    if bad.any():
        k = int(np.argmax(bad)) + 1
        raise DataError(f"{where}: row {first_row + _row_of(indptr, k)} lists feature "
                        f"{int(idx[k])} after {int(idx[k - 1])}; the indices of a row must "
                        "be sorted without repeats")
    if check_values:
        with np.errstate(all="ignore"):
            finite = np.isfinite(values.sum())
        if not finite and not np.isfinite(values).all():
            k = int(np.argmax(~np.isfinite(values)))
            n_nan = int(np.count_nonzero(np.isnan(values)))
            count = int(np.count_nonzero(~np.isfinite(values)))
            raise DataError(f"{where}: values has {count} non-finite value(s) ({n_nan} NaN, "
                            f"{count - n_nan} Inf); the first is in row "
                            f"{first_row + _row_of(indptr, k)}, feature {int(idx[k])}; "
                            "expected only finite numbers")


def _row_of(indptr: np.ndarray, k: int) -> int:
    """The row (within a block whose indptr is as stored) holding non-zero ``k``."""
    return int(np.searchsorted(indptr - indptr[0], k, side="right")) - 1


# ---------------------------------------------------------------------------------
# The metadata of a CSR shard, for open_dataset.

def _dataset(f: h5py.File, path: str, name: str) -> h5py.Dataset:
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        found = ", ".join(repr(k) for k in f.keys()) or "nothing"
        raise DataError(f"'{path}' has layout 'csr' but no dataset '{name}'; expected "
                        f"datasets 'indptr', 'indices', 'values' and 'y'; found {found}")
    return obj


def csr_meta(f: h5py.File, path: str, n_rows: int, n_features: int) -> dict:
    """``nnz`` and ``dtype`` (of the values) of a CSR shard, its datasets checked against
    each other and the attributes; reads two numbers of ``indptr``, nothing else."""
    indptr, indices = _dataset(f, path, "indptr"), _dataset(f, path, "indices")
    values = _dataset(f, path, "values")
    nnz = f.attrs.get("nnz")
    if not isinstance(nnz, numbers.Integral) or isinstance(nnz, bool) or nnz < 0:
        raise DataError(f"'{path}' has layout 'csr' but attribute nnz={nnz!r}; expected "
                        "the number of non-zeros (an integer >= 0)")
    nnz = int(nnz)
    for name, d in (("indptr", indptr), ("indices", indices)):
        if d.ndim != 1 or d.dtype.kind not in "iu":
            raise DataError(f"{name} in '{path}' must be a 1-D integer array; found shape "
                            f"{d.shape} dtype {d.dtype}")
    if values.ndim != 1 or values.dtype.kind != "f" or values.dtype.itemsize not in (4, 8):
        raise DataError(f"values in '{path}' must be a 1-D float32 or float64 array; found "
                        f"shape {values.shape} dtype {values.dtype}")
    if indptr.shape[0] != n_rows + 1:
        raise DataError(f"'{path}' has attribute n_rows={n_rows} but indptr has "
                        f"{indptr.shape[0]} entries; expected n_rows + 1 = {n_rows + 1}")
    if indices.shape[0] != nnz or values.shape[0] != nnz:
        raise DataError(f"'{path}' has attribute nnz={nnz} but {indices.shape[0]} indices "
                        f"and {values.shape[0]} values")
    first, last = int(indptr[0]), int(indptr[n_rows])
    if first != 0 or last != nnz:
        raise DataError(f"'{path}': indptr must start at 0 and end at nnz={nnz}; found "
                        f"{first} ... {last} (a damaged CSR shard)")
    if indices.dtype.kind == "u" and n_features > np.iinfo(indices.dtype).max + 1:
        raise DataError(f"'{path}' has n_features={n_features} but {indices.dtype} indices, "
                        f"which reach {np.iinfo(indices.dtype).max} only")
    return dict(nnz=nnz, dtype=np.dtype(values.dtype.name))

"""Reading global row ranges of a CSR dataset, whole or in blocks of bounded memory.

A rank's contiguous block of rows is, per shard, two slices: ``indptr`` over its rows,
then ``indices`` and ``values`` over the non-zeros those bound (and ``y``). Every block
read is checked (:func:`mpisgd.data.csr.check_csr_block`: indptr, indices in range and
sorted; values finite when asked), so a damaged shard is an error naming the file.
"""

from __future__ import annotations

from typing import Iterator

import h5py
import numpy as np

from mpisgd.data.checks import check_y
from mpisgd.data.csr import CsrBlock, check_csr_block
from mpisgd.data.format import DatasetInfo, open_shard
from mpisgd.data.read import BLOCK_BYTES, _check_range, _pieces
from mpisgd.errors import DataError


def _require_csr(info: DatasetInfo) -> None:
    if info.layout != "csr":
        raise DataError(f"dataset '{info.path}' is dense (X); read its rows with read_rows, "
                        "not read_csr_rows")


class CsrReader:
    """Reads global row ranges of a CSR dataset, keeping the shard files open between
    reads. ``check_values``: refuse NaN/Inf values and a bad ``y`` too (the structure is
    always checked). A context manager; one reader per thread."""

    def __init__(self, info: DatasetInfo, *, check_values: bool = False):
        _require_csr(info)
        self.info, self.check_values = info, check_values
        self._files: dict[int, h5py.File] = {}

    def _file(self, shard: int) -> h5py.File:
        f = self._files.get(shard)
        if f is not None:
            return f
        path = self.info.shards[shard]
        try:
            f = open_shard(path)
            shapes = f["indptr"].shape, f["indices"].shape, f["values"].shape
        except (OSError, KeyError) as e:
            raise DataError(f"cannot read data file '{path}': {e}") from e
        nnz = self.info.shard_nnz[shard]
        if shapes != ((self.info.rows[shard] + 1,), (nnz,), (nnz,)):
            f.close()
            raise DataError(f"data file '{path}' changed since the dataset was opened: "
                            f"indptr, indices, values have shapes {shapes}")
        self._files[shard] = f
        return f

    def _indptr(self, shard: int, a: int, b: int) -> np.ndarray:
        """indptr[a:b+1] of a shard, checked to be a non-decreasing range of its nnz."""
        path = self.info.shards[shard]
        try:
            ip = self._file(shard)["indptr"][a:b + 1].astype(np.int64)
        except OSError as e:
            raise DataError(f"cannot read indptr of rows [{a}, {b}) of data file "
                            f"'{path}': {e}") from e
        nnz, row = self.info.shard_nnz[shard], self.info.offsets[shard] + a
        steps = np.diff(ip)
        if steps.size and steps.min() < 0:
            k = int(np.argmax(steps < 0))
            raise DataError(f"data file '{path}': indptr decreases at row {row + k} "
                            f"({int(ip[k])} then {int(ip[k + 1])}); indptr must be "
                            "non-decreasing (a damaged or wrongly written CSR shard)")
        if ip[0] < 0 or ip[-1] > nnz:
            raise DataError(f"data file '{path}': indptr of rows [{row}, {row + b - a}) "
                            f"points at non-zeros {int(ip[0])}..{int(ip[-1])}, outside the "
                            f"shard's nnz={nnz}")
        return ip

    def indptr(self, shard: int) -> np.ndarray:
        """The whole indptr of a shard (rows + 1 entries), checked."""
        return self._indptr(shard, 0, self.info.rows[shard])

    def read(self, start: int, stop: int) -> tuple[CsrBlock, np.ndarray]:
        """Rows [start, stop) as a CsrBlock (indptr from 0) and y."""
        info = self.info
        start, stop = _check_range(info, start, stop)
        pieces = [(s, a, b, self._indptr(s, a, b)) for s, a, b in _pieces(info, start, stop)]
        total = sum(int(ip[-1] - ip[0]) for *_, ip in pieces)
        indptr = np.zeros(stop - start + 1, dtype=np.int64)
        indices = np.empty(total, dtype=info.index_dtype)
        values = np.empty(total, dtype=info.dtype)
        y = np.empty(stop - start, dtype=info.y_dtype)
        row = nz = 0
        for shard, a, b, ip in pieces:
            n = int(ip[-1] - ip[0])
            indptr[row + 1:row + 1 + b - a] = ip[1:] - ip[0] + nz
            self._piece(shard, a, b, ip, indices[nz:nz + n], values[nz:nz + n],
                        y[row:row + b - a])
            row, nz = row + b - a, nz + n
        return CsrBlock(indptr, indices, values), y

    def _piece(self, shard, a, b, ip, indices, values, y) -> None:
        """One shard's part of a read, into the result's slices, checked."""
        f, path = self._file(shard), self.info.shards[shard]
        s0, s1 = int(ip[0]), int(ip[-1])
        where, first = f"data file '{path}'", self.info.offsets[shard] + a
        try:
            stored = f["indices"]
            if stored.dtype == indices.dtype:
                if s1 > s0:
                    stored.read_direct(indices, np.s_[s0:s1])
                got = indices
            else:   # checked before the cast, which could wrap a bad id into range
                got = stored[s0:s1]
            if s1 > s0:
                f["values"].read_direct(values, np.s_[s0:s1])
            if b > a:
                f["y"].read_direct(y, np.s_[a:b])
        except OSError as e:
            raise DataError(f"cannot read rows [{a}, {b}) of data file '{path}': {e}") from e
        check_csr_block(ip, got, values, self.info.n_features, where, first,
                        check_values=self.check_values)
        if got is not indices:
            indices[:] = got
        if self.check_values:
            check_y(y, self.info.task, self.info.n_classes, where, first)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> CsrReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_csr_rows(info: DatasetInfo, lo: int, hi: int, *, check_values: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Global rows [lo, hi) of a CSR dataset as ``(indptr, indices, values, y)``:
    indptr int64 from 0 (hi - lo + 1 entries), indices ``info.index_dtype``, values the
    dataset dtype, y as ``read_rows`` gives it. May span shards; per shard, one slice of
    indptr then one of indices and values. For many reads use ``CsrReader``."""
    with CsrReader(info, check_values=check_values) as reader:
        block, y = reader.read(lo, hi)
    return block.indptr, block.indices, block.values, y


def csr_block_rows(info: DatasetInfo, nbytes: int = BLOCK_BYTES) -> int:
    """Rows per block so that an average block of non-zeros takes about ``nbytes``."""
    per_row = (info.nnz or 0) / max(1, info.n_rows) * (
        info.index_dtype.itemsize + info.dtype.itemsize) + 16
    return max(1, int(nbytes // per_row))


def iter_csr_blocks(info: DatasetInfo, start: int = 0, stop: int | None = None,
                    block_rows: int | None = None, *, check_values: bool = False
                    ) -> Iterator[tuple[int, CsrBlock, np.ndarray]]:
    """Yield ``(first_row, CsrBlock, y)`` blocks covering [start, stop)."""
    stop = info.n_rows if stop is None else stop
    start, stop = _check_range(info, start, stop)
    step = block_rows or csr_block_rows(info)
    with CsrReader(info, check_values=check_values) as reader:
        for a in range(start, stop, step):
            block, y = reader.read(a, min(stop, a + step))
            yield a, block, y

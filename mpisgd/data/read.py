"""Reading global row ranges of a dataset, whole or in blocks of bounded memory.

A range may span shards; each shard's part is read as one slice straight into the
result. Open the dataset first with :func:`mpisgd.data.format.open_dataset`.
"""

from __future__ import annotations

import bisect
import numbers
from typing import Iterator

import h5py
import numpy as np

from mpisgd.data.csr import require_dense
from mpisgd.data.format import DatasetInfo, open_shard
from mpisgd.errors import DataError

# Blocks handed out by iter_blocks: bounded memory whatever the file size.
BLOCK_BYTES = 32 << 20


def _check_range(info: DatasetInfo, start, stop) -> tuple[int, int]:
    if not (isinstance(start, numbers.Integral) and isinstance(stop, numbers.Integral)):
        raise DataError(f"row range must be integers; got [{start!r}, {stop!r})")
    start, stop = int(start), int(stop)
    if not 0 <= start <= stop <= info.n_rows:
        raise DataError(f"row range [{start}, {stop}) is outside dataset '{info.path}' "
                        f"with {info.n_rows} rows")
    return start, stop


def _pieces(info: DatasetInfo, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
    """(shard, local start, local stop) of each shard the global range [start, stop) touches."""
    shard = bisect.bisect_right(info.offsets, start) - 1
    pos = start
    while pos < stop:
        end = min(stop, info.offsets[shard + 1])
        if end > pos:
            yield shard, pos - info.offsets[shard], end - info.offsets[shard]
        pos = end
        shard += 1


class DatasetReader:
    """Reads global row ranges, keeping the shard files open between reads.

    Use it (not ``read_rows``) when reading many ranges: opening an HDF5 file costs far
    more than reading a few rows. A context manager; one reader per thread.
    """

    def __init__(self, info: DatasetInfo):
        require_dense(info, "read here yet: this step reads dense rows (X) only")
        self.info = info
        self._files: dict[int, h5py.File] = {}

    def _file(self, shard: int) -> h5py.File:
        f = self._files.get(shard)
        if f is not None:
            return f
        path = self.info.shards[shard]
        try:
            f = open_shard(path)
            shape = f["X"].shape
        except (OSError, KeyError) as e:
            raise DataError(f"cannot read data file '{path}': {e}") from e
        want = (self.info.rows[shard], self.info.n_features)
        if shape != want:
            f.close()
            raise DataError(f"data file '{path}' changed since the dataset was opened: X has "
                            f"shape {shape}, expected {want}")
        self._files[shard] = f
        return f

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) as C-contiguous (X, y), read as one slice per shard."""
        info = self.info
        start, stop = _check_range(info, start, stop)
        X = np.empty((stop - start, info.n_features), dtype=info.dtype)
        y = np.empty(stop - start, dtype=info.y_dtype)
        out = 0
        for shard, a, b in _pieces(info, start, stop):
            f = self._file(shard)
            dest = np.s_[out:out + b - a]
            try:
                # read_direct reads the hyperslab straight into the result: no
                # temporary per shard and no concatenation.
                f["X"].read_direct(X, np.s_[a:b], dest)
                f["y"].read_direct(y, np.s_[a:b], dest)
            except OSError as e:
                raise DataError(f"cannot read rows [{a}, {b}) of data file "
                                f"'{info.shards[shard]}': {e}") from e
            out += b - a
        return X, y

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_rows(info: DatasetInfo, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Global rows [start, stop) as C-contiguous (X, y); may span shards.

    X has the dataset dtype; y is X's dtype for regression and int64 otherwise. Opens
    and closes the shards it needs: for many reads use ``DatasetReader``.
    """
    with DatasetReader(info) as reader:
        return reader.read(start, stop)


def default_block_rows(n_features: int, itemsize: int = 8, nbytes: int = BLOCK_BYTES) -> int:
    """Rows per block so that one block of X takes about ``nbytes``."""
    return max(1, nbytes // (max(1, n_features) * itemsize))


def iter_blocks(info: DatasetInfo, start: int = 0, stop: int | None = None,
                block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(first_row, X, y)`` blocks covering [start, stop), bounded in memory."""
    stop = info.n_rows if stop is None else stop
    start, stop = _check_range(info, start, stop)
    step = block_rows or default_block_rows(info.n_features, info.dtype.itemsize)
    with DatasetReader(info) as reader:
        for a in range(start, stop, step):
            b = min(stop, a + step)
            X, y = reader.read(a, b)
            yield a, X, y


def iter_selected(info: DatasetInfo, lo: int, rows: np.ndarray,
                  block_rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]]:
    """Yield ``(X, y, pick)`` blocks covering global rows ``lo + rows`` (``rows``
    ascending): ``X[pick]``, ``y[pick]`` are the selected rows of the block. Memory holds
    one block; blocks without a selected row are not read."""
    if rows.size == 0:
        return
    step = block_rows or default_block_rows(info.n_features, info.dtype.itemsize)
    end = int(rows[-1]) + 1
    with DatasetReader(info) as reader:
        for a in range(int(rows[0]), end, step):
            b = min(a + step, end)
            pick = rows[np.searchsorted(rows, a):np.searchsorted(rows, b)] - a
            if pick.size:
                X, y = reader.read(lo + a, lo + b)
                yield X, y, pick

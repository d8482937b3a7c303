"""Writing CSR shards, streaming: :class:`CsrShardWriter` appends blocks of rows.

The shard is written and published as a dense one is (:class:`mpisgd.data.write.ShardWriter`:
a temporary file, fsync, rename); only its datasets differ: ``indptr``, ``indices``,
``values`` and ``y``, each growable and chunked, the non-zeros compressed. Memory holds
one block, whatever the shard's size.
"""

from __future__ import annotations

import numpy as np

from mpisgd.data.checks import check_y
from mpisgd.data.csr import CsrBlock, check_csr_block, index_dtype
from mpisgd.data.write import CHUNK_BYTES, ShardWriter
from mpisgd.errors import DataError, OutputError

# Sorted feature ids and repeated values compress well (a few times for bag-of-words
# ids); level 1 keeps decompression cheaper than the read it saves, and a small shard
# does not store a megabyte of empty chunk.
COMPRESSION = dict(compression="gzip", compression_opts=1, shuffle=True)


class CsrShardWriter(ShardWriter):
    """Streams CSR blocks of rows (``append(CsrBlock, y)``) into one shard, published
    atomically at ``close``. Every block is checked first: indptr, indices in
    [0, n_features) sorted without repeats within a row, finite values, labels."""

    layout = "csr"

    def _create(self, chunk_rows: int | None, expected_rows: int | None) -> None:
        f = self._file
        f.attrs["layout"] = "csr"
        f.attrs["nnz"] = 0
        self.nnz = 0
        self.index_dtype = index_dtype(self.n_features)
        rows = chunk_rows or CHUNK_BYTES // 8
        if expected_rows:
            rows = min(rows, int(expected_rows) + 1)
        entries = CHUNK_BYTES // self.dtype.itemsize
        grow = dict(shape=(0,), maxshape=(None,))
        self._indptr = f.create_dataset("indptr", data=np.zeros(1, np.int64), maxshape=(None,),
                                        chunks=(rows,), **COMPRESSION)
        self._indices = f.create_dataset("indices", chunks=(entries,), dtype=self.index_dtype,
                                         **grow, **COMPRESSION)
        self._values = f.create_dataset("values", chunks=(entries,), dtype=self.dtype, **grow,
                                        **COMPRESSION)
        self._y = f.create_dataset("y", chunks=(rows,), dtype=self.y_dtype, **grow)

    def append(self, X, y) -> None:
        """Append rows: ``X`` a CsrBlock (or an ``(indptr, indices, values)`` triple)."""
        if self._file is None:
            raise OutputError(f"shard '{self.path}' is already closed")
        block = X if isinstance(X, CsrBlock) else CsrBlock(*X)
        y = np.asarray(y)
        where = f"rows written to '{self.path}'"
        if y.shape != (len(block),):
            raise DataError(f"{where}: y has shape {y.shape}; expected ({len(block)},), one "
                            "value per row")
        check_csr_block(block.indptr, block.indices, block.values, self.n_features, where,
                        self.n_rows)
        check_y(y, self.task, self.n_classes, where, self.n_rows)
        a, b = self.n_rows, self.n_rows + len(block)
        if b == a:
            return
        base = int(block.indptr[0])
        z0, z1 = self.nnz, self.nnz + int(block.indptr[-1]) - base
        try:
            self._indptr.resize(b + 1, axis=0)
            self._indptr[a + 1:b + 1] = block.indptr[1:] - base + z0
            if z1 > z0:
                self._indices.resize(z1, axis=0)
                self._values.resize(z1, axis=0)
                self._indices[z0:z1] = block.indices.astype(self.index_dtype, copy=False)
                self._values[z0:z1] = block.values.astype(self.dtype, copy=False)
            self._y.resize(b, axis=0)
            self._y[a:b] = y.astype(self._y.dtype, copy=False)
        except OSError as e:
            self.abort()
            raise OutputError(f"cannot write shard '{self.path}': {e}") from e
        self.n_rows, self.nnz = b, z1

    def _finish(self) -> None:
        self._file.attrs["nnz"] = self.nnz


def write_csr_shard(path, indptr, indices, values, y, *, n_features: int, task: str,
                    n_classes: int, dtype=None, **extras) -> None:
    """Write one complete CSR shard atomically; ``dtype`` defaults to the values'."""
    block = CsrBlock(indptr, indices, values)
    with CsrShardWriter(path, n_features, task, n_classes,
                        block.values.dtype if dtype is None else dtype,
                        expected_rows=len(block), **extras) as w:
        w.append(block, y)


"""The sum across ranks of sparse gradients: (key, value) pairs, or one dense Allreduce.

Each rank holds the gradient of the keys its rows touched (sorted, unique). Summing them
costs either an allgather of every rank's pairs, bytes proportional to the step's keys,
or an Allreduce of the whole vector, bytes proportional to the model's width; which is
cheaper depends on how many keys a step touches compared with the width (ps-lite and
PyTorch's sparse allreduce face the same choice). ``method = "auto"`` decides per step from
the ranks' key counts, which every rank learns first (one small allgather that also
carries the step's loss, rows and votes), so every rank takes the same path.

With ``comm.compression`` (a :class:`~mpisgd.comm.sparse_compress.SparseCompression`)
every step gathers pairs: each rank's keys, and its values compressed; a dense Allreduce
cannot carry compressed values.

Both paths give every rank the same result: the pairs are summed per key in rank order
(a k-way merge, :mod:`mpisgd.kernels.merge`), and MPI's Allreduce gives every rank the
same vector. The keys of the result are those whose summed gradient is non-zero, in both
paths, so the path taken never changes which keys an optimizer step touches.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from mpisgd.comm.sparse_compress import SparseCompression
from mpisgd.kernels.merge import merge_runs

METHODS = ("auto", "dense", "pairs")


class SparseReducer:
    """Collective over ``comm``: sum sparse gradients of a ``width``-entry vector.

    ``head``: a few float64 values per rank summed alongside (loss, rows, votes).
    """

    direct = False   # as a dense Reducer's: the caller's buffers hold input and sums

    def __init__(self, comm: MPI.Intracomm, width: int, dtype, method: str, n_head: int,
                 compression: SparseCompression | None = None):
        if method not in METHODS:
            raise ValueError(f"The 'method' argument of SparseReducer must be one of "
                             f"{METHODS}. Got {method!r} instead.")
        self.comm, self.width, self.method = comm, int(width), method
        self.dtype = np.dtype(dtype)
        self.size = comm.Get_size()
        self._heads = np.zeros((self.size, n_head + 1), dtype=np.float64)
        self._mine = np.zeros(n_head + 1, dtype=np.float64)
        self._dense: np.ndarray | None = None   # made on the first dense step
        self.sent = 0                           # bytes this rank sent, all steps
        self.steps = {"pairs": 0, "dense": 0}
        self.compression = compression
        # the error-feedback residual (checkpointed by the runner, as in dense jobs)
        self.residual = compression.residual if compression is not None else None

    def dense_bytes(self) -> int:
        """Bytes one rank sends in a dense step (a ring Allreduce's payload)."""
        return self.width * self.dtype.itemsize

    def __call__(self, keys: np.ndarray, vals: np.ndarray, head: np.ndarray, step: int = 0):
        """(summed keys, their summed values, summed head) from this rank's sorted unique
        int64 ``keys``, their ``vals`` and its ``head``; the same on every rank."""
        payload = None
        if self.compression is not None:
            keys, payload = self.compression.compress(keys, vals, step)
        self._mine[0] = keys.size
        self._mine[1:] = head
        if self.size == 1:
            self._heads[0] = self._mine
        else:
            self.comm.Allgather(self._mine, self._heads)
            self.sent += self._mine.nbytes
        counts = self._heads[:, 0].astype(np.int64)
        total_head = self._heads[:, 1:].sum(axis=0)   # rank order: the same everywhere
        if payload is not None:
            self.steps["pairs"] += 1
            return (*self._gather_compressed(keys, payload, counts, step), total_head)
        if self.size == 1:
            keep = vals != 0
            return keys[keep], vals[keep], total_head
        if self._pairs(int(counts.sum())):
            self.steps["pairs"] += 1
            return (*self._gather_pairs(keys, vals, counts), total_head)
        self.steps["dense"] += 1
        return (*self._allreduce(keys, vals), total_head)

    def _pairs(self, n_pairs: int) -> bool:
        if self.method != "auto":
            return self.method == "pairs"
        # Every rank receives every pair (8-byte key + value); a ring Allreduce moves
        # about twice the vector through each rank.
        return n_pairs * (8 + self.dtype.itemsize) < 2 * self.dense_bytes()

    def _gather_pairs(self, keys, vals, counts):
        n = int(counts.sum())
        all_keys = np.empty(n, dtype=np.int64)
        all_vals = np.empty(n, dtype=self.dtype)
        displs = np.concatenate(([0], np.cumsum(counts)[:-1]))
        self.comm.Allgatherv(keys, [all_keys, counts, displs, MPI.INT64_T])
        self.comm.Allgatherv(vals, [all_vals, counts, displs, _mpi_type(self.dtype)])
        self.sent += keys.nbytes + vals.nbytes
        return merge_runs(all_keys, all_vals, counts)   # rank order within a key

    def _gather_compressed(self, keys, payload, counts, step):
        """Every rank's keys and compressed values, decoded and summed per key."""
        comp = self.compression
        sizes = np.array([comp.payload_bytes(int(c)) for c in counts], dtype=np.int64)
        n = int(counts.sum())
        all_keys = np.empty(n, dtype=np.int64)
        data = np.empty(int(sizes.sum()), dtype=np.uint8)
        if self.size == 1:
            all_keys[:], data[:] = keys, payload
        else:
            displs = np.concatenate(([0], np.cumsum(counts)[:-1]))
            self.comm.Allgatherv(keys, [all_keys, counts, displs, MPI.INT64_T])
            bdispls = np.concatenate(([0], np.cumsum(sizes)[:-1]))
            self.comm.Allgatherv(payload, [data, sizes, bdispls, MPI.BYTE])
            self.sent += keys.nbytes + payload.nbytes
        at = np.concatenate(([0], np.cumsum(sizes)))
        all_vals = np.concatenate(
            [comp.decode(data[at[r]:at[r + 1]], int(counts[r]), step)
             for r in range(self.size)]) if n else np.empty(0, dtype=self.dtype)
        return merge_runs(all_keys, all_vals, counts)   # drops keys that sum to zero

    def _allreduce(self, keys, vals):
        if self._dense is None:
            self._dense = np.zeros(self.width, dtype=self.dtype)
        dense = self._dense
        dense[keys] = vals
        self.comm.Allreduce(MPI.IN_PLACE, dense)
        self.sent += dense.nbytes
        out_keys = np.flatnonzero(dense).astype(np.int64)
        out_vals = dense[out_keys]
        dense[out_keys] = 0   # the only non-zeros left: clean for the next step
        return out_keys, out_vals


def _mpi_type(dtype: np.dtype):
    return MPI.FLOAT if dtype == np.float32 else MPI.DOUBLE

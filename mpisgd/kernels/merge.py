"""Summing sparse gradients: merge sorted (key, value) runs into one, adding equal keys.

Each rank (or worker) contributes a run of strictly increasing keys with their values;
the sum over runs is the sorted union of the keys, each with the sum of its values taken
in run order, so every rank that merges the same runs gets the same bits. A k-way merge
is linear in the pairs, where sorting their concatenation (np.argsort, then a segment sum)
took 1.2 ms for two runs of 17,000 keys, a third of a sparse step (docs/sparse.md).
Keys whose sum is exactly 0 are dropped, as the dense Allreduce path drops them.
"""

from __future__ import annotations

import numpy as np

from mpisgd.kernels.options import njit


@njit
def _merge(keys, vals, starts, out_keys, out_vals):
    """Merge runs keys[starts[r]:starts[r + 1]] (each strictly increasing) into out_*;
    returns the number of pairs written. vals has at least one entry."""
    k = starts.shape[0] - 1
    pos = starts[:-1].copy()
    n = 0
    while True:
        best = -1
        key = 0
        for r in range(k):
            if pos[r] < starts[r + 1] and (best < 0 or keys[pos[r]] < key):
                best = r
                key = keys[pos[r]]
        if best < 0:
            return n
        acc = vals[pos[best]]
        pos[best] += 1
        for r in range(best + 1, k):   # the same key in later runs, in run order
            p = pos[r]
            if p < starts[r + 1] and keys[p] == key:
                acc += vals[p]
                pos[r] = p + 1
        if acc != 0:
            out_keys[n] = key
            out_vals[n] = acc
            n += 1


def merge_runs(keys: np.ndarray, vals: np.ndarray, counts) -> tuple[np.ndarray, np.ndarray]:
    """(keys, summed values) of the runs of ``counts`` pairs each, one after another in
    ``keys`` (int64, strictly increasing within a run) and ``vals`` (float32/float64)."""
    if keys.dtype != np.int64 or keys.ndim != 1 or vals.shape != keys.shape \
            or vals.dtype not in (np.float32, np.float64):
        raise TypeError(f"merge_runs needs 1-D int64 keys and float32/float64 values of the "
                        f"same length; got {keys.dtype} {keys.shape} and {vals.dtype} "
                        f"{vals.shape}")
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    if starts[-1] != keys.size or (counts < 0).any():
        raise ValueError(f"merge_runs: the runs' counts {counts.tolist()} do not add up to "
                         f"the {keys.size} pairs")
    out_keys = np.empty(keys.size, dtype=np.int64)
    out_vals = np.empty(keys.size, dtype=vals.dtype)
    if keys.size == 0:
        return out_keys, out_vals
    n = _merge(np.ascontiguousarray(keys), np.ascontiguousarray(vals), starts, out_keys,
               out_vals)
    return out_keys[:n], out_vals[:n]

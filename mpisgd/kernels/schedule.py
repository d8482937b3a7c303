"""An epoch's schedule for one rank in two linear passes (the reference is
:func:`mpisgd.data.partition.local_schedule`, which a unit test compares it with).

The reference inverts the whole permutation (a scatter over every training row of every
rank) and sorts this rank's rows by step. Here one sequential pass over the permutation
notes, for this rank's rows only, the step that visits each, and a counting sort by
step (stable: ascending local order within a step) lays them out: O(n) with no sort.
"""

from __future__ import annotations

import numpy as np

from mpisgd.kernels.options import njit


@njit
def _schedule(perm, first, count, batch, n_steps, order, offsets):
    step_of = np.empty(count, np.int64)
    for i in range(perm.shape[0]):
        local = perm[i] - first
        if 0 <= local < count:
            step_of[local] = i // batch
    offsets[:] = 0
    for r in range(count):
        offsets[step_of[r] + 1] += 1
    for s in range(n_steps):
        offsets[s + 1] += offsets[s]
    fill = offsets[:-1].copy()
    for r in range(count):   # ascending r: each step's rows stay in memory order
        s = step_of[r]
        order[fill[s]] = r
        fill[s] += 1


def local_schedule(perm: np.ndarray, first: int, count: int,
                   batch: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's rows of every step, ``(order, offsets)``, exactly as
    :func:`mpisgd.data.partition.local_schedule` returns them."""
    perm = np.ascontiguousarray(perm, dtype=np.int64)
    n_train = perm.shape[0]
    if not (0 <= first and 0 <= count and first + count <= n_train and batch >= 1):
        raise ValueError(f"rows [{first}, {first + count}) and batch {batch} do not fit a "
                         f"permutation of {n_train} rows")
    n_steps = -(-n_train // batch)
    order = np.empty(count, dtype=np.int64)
    offsets = np.empty(n_steps + 1, dtype=np.int64)
    _schedule(perm, first, count, batch, n_steps, order, offsets)
    return order, offsets

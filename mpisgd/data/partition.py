"""Which rows a rank owns and which it uses in each step: pure functions of
(row counts, rank, size, seed, epoch), testable without MPI.

The global minibatch of step t in an epoch is fixed by the seed alone: the epoch's
permutation of the training rows, cut into consecutive slices of ``batch`` rows.
Each rank holds a contiguous block of rows and computes the part of every global
minibatch that falls into its block ("owner computes"), so the summed gradient is the
same at any world size, every row is used exactly once per epoch, and all ranks take
the same number of steps (a rank with no rows in a step contributes zeros).
"""

from __future__ import annotations

import numpy as np

def block_range(n: int, size: int, rank: int) -> tuple[int, int]:
    """Rows [lo, hi) of ``rank`` when ``n`` rows are split into ``size`` balanced blocks."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A stateless 64-bit hash (SplitMix64 finaliser), vectorised; wraps mod 2**64."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def holdout_mask(lo: int, hi: int, fraction: float, seed: int) -> np.ndarray:
    """True for the held-out rows among global rows [lo, hi).

    A row is held out when a hash of (seed, row) falls below ``fraction``: each rank
    decides for its own rows with no global array, and the split does not depend on
    the world size.
    """
    if fraction <= 0.0:
        return np.zeros(hi - lo, dtype=bool)
    rows = np.arange(lo, hi, dtype=np.uint64)
    key = _splitmix64(np.array([seed], dtype=np.uint64))[0]
    h = _splitmix64(rows ^ key)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2.0**53) < fraction


def steps_per_epoch(n_train: int, batch: int) -> int:
    """Global steps in one epoch; the last minibatch may be smaller."""
    return -(-n_train // batch)


def epoch_permutation(n_train: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order in which the epoch visits training rows (indices 0..n_train-1).

    Identical on every rank: a function of (seed, epoch) only.
    """
    if not shuffle:
        return np.arange(n_train, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 1, epoch])))
    return rng.permutation(n_train).astype(np.int64, copy=False)


def local_schedule(perm: np.ndarray, first: int, count: int,
                   batch: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's rows of every step: ``(order, offsets)``.

    The rank owns training indices [first, first+count). ``order[offsets[t]:offsets[t+1]]``
    are the rank's local training offsets (0..count-1) used in step t, ascending, so a
    step reads its rows in memory order.
    """
    n_train = perm.shape[0]
    n_steps = steps_per_epoch(n_train, batch)
    if count == 0:
        return np.empty(0, dtype=np.int64), np.zeros(n_steps + 1, dtype=np.int64)
    if batch >= n_train:  # full batch: one step, every local row, no permutation needed
        return np.arange(count, dtype=np.int64), np.array([0, count], dtype=np.int64)
    position = np.empty(n_train, dtype=np.int64)
    position[perm] = np.arange(n_train, dtype=np.int64)
    step = position[first:first + count] // batch
    # A stable sort by step keeps ascending local order within each step.
    order = np.argsort(step, kind="stable").astype(np.int64, copy=False)
    offsets = np.zeros(n_steps + 1, dtype=np.int64)
    np.cumsum(np.bincount(step, minlength=n_steps), out=offsets[1:])
    return order, offsets

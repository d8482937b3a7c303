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


# The epoch's order is a keyed pseudo-random permutation: a balanced Feistel network
# over the smallest even number of bits that covers the rows, walked until it lands
# inside [0, n) ("cycle walking"), keyed by (seed, epoch). Unlike a shuffled array, a
# row's position is computed from the row alone, so a rank schedules its own rows
# without building, or even reading, the permutation of everybody's
# (mpisgd.kernels.schedule does exactly this computation, compiled).
FEISTEL_ROUNDS = 4


def epoch_keys(seed: int, epoch: int) -> np.ndarray:
    """The Feistel round keys of an epoch (uint64): a function of (seed, epoch) only."""
    return np.random.SeedSequence([seed, 1, epoch]).generate_state(FEISTEL_ROUNDS, np.uint64)


def feistel_half_bits(n: int) -> int:
    """Bits of each Feistel half for a domain covering [0, n): at least 1."""
    return max(1, ((max(n, 2) - 1).bit_length() + 1) // 2)


def _round(right: np.ndarray, key: np.uint64) -> np.ndarray:
    """A Feistel round function: one multiply and one xorshift (keys are full-entropy
    64-bit words, so the rounds need no stronger mixing to shuffle training rows)."""
    with np.errstate(over="ignore"):
        z = (right ^ key) * np.uint64(0x9E3779B97F4A7C15)
    return z ^ (z >> np.uint64(29))


def _feistel(x: np.ndarray, half: int, keys: np.ndarray) -> np.ndarray:
    mask = np.uint64((1 << half) - 1)
    left, right = x >> np.uint64(half), x & mask
    for k in keys:
        left, right = right, left ^ (_round(right, k) & mask)
    return (left << np.uint64(half)) | right


def epoch_positions(rows: np.ndarray, n_train: int, keys: np.ndarray,
                    block: int = 1) -> np.ndarray:
    """Where each of ``rows`` (indices in [0, n_train)) comes in the epoch's order.

    ``block`` > 1: the epoch visits contiguous blocks of ``block`` training rows (the last
    one may be shorter) in a random order, and the rows of a block in sequence: a step
    reads whole runs of consecutive rows instead of scattered ones.
    """
    if block <= 1:
        return _walk(rows.astype(np.uint64), n_train, keys)
    n_blocks = -(-n_train // block)
    short = block - (n_train - (n_blocks - 1) * block)   # rows missing from the last block
    slot = _walk((rows // block).astype(np.uint64), n_blocks, keys)
    last = _walk(np.array([n_blocks - 1], dtype=np.uint64), n_blocks, keys)[0]
    # blocks after the short one in the epoch's order start `short` rows earlier
    return slot * block + rows % block - np.where(slot > last, short, 0)


def _walk(x: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """The keyed permutation of [0, n) at ``x``: Feistel rounds, cycle-walked into range."""
    half = feistel_half_bits(n)
    pos = _feistel(x, half, keys)
    out = pos >= np.uint64(n)
    while out.any():   # cycle walking: at most a few rounds (the domain is < 4 n)
        pos[out] = _feistel(pos[out], half, keys)
        out = pos >= np.uint64(n)
    return pos.astype(np.int64)


def epoch_permutation(n_train: int, seed: int, epoch: int, shuffle: bool,
                      block: int = 1) -> np.ndarray:
    """The order in which the epoch visits training rows (indices 0..n_train-1): rows,
    or with ``block`` > 1 contiguous blocks of rows, in a keyed random order.

    Identical on every rank: a function of (seed, epoch, block) only.
    """
    rows = np.arange(n_train, dtype=np.int64)
    if not shuffle:
        return rows
    perm = np.empty(n_train, dtype=np.int64)
    perm[epoch_positions(rows, n_train, epoch_keys(seed, epoch), block)] = rows
    return perm


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
    # A stable sort by step keeps ascending local order within each step. NumPy sorts
    # 16-bit keys stably with a radix sort, 3-4x faster than for int64 keys (measured at
    # 1M rows: the schedule was a third of a logistic epoch); same order either way.
    keys = step.astype(np.uint16) if n_steps <= 1 << 16 else step
    order = np.argsort(keys, kind="stable").astype(np.int64, copy=False)
    offsets = np.zeros(n_steps + 1, dtype=np.int64)
    np.cumsum(np.bincount(step, minlength=n_steps), out=offsets[1:])
    return order, offsets


def fold_of(lo: int, hi: int, folds: int, seed: int, labels: np.ndarray | None = None,
            before: np.ndarray | None = None) -> np.ndarray:
    """The k-fold fold (0..folds-1, int64) of each global row in [lo, hi).

    Rows are cut into consecutive groups of ``folds`` rows (rows [g*folds, (g+1)*folds));
    the rows of a group go to distinct folds, in the order of a hash of (seed, row). So
    each rank decides for its own rows with no global array, the result does not depend
    on the world size, and the folds' sizes differ by at most one row (a plain hash per
    row, like ``holdout_mask``, would leave them binomially unequal).

    Stratified (classification): pass ``labels`` (int labels of rows [lo, hi)) and
    ``before`` (``before[c]`` = number of class-c rows in [0, lo), one entry per class;
    an exclusive scan of the ranks' class counts gives it). Then the same grouping runs
    along each class's own sequence of rows, with a hash stream per class, so every fold
    holds floor or ceil of n_c / folds rows of every class c: exact stratification with
    one small scan instead of gathered labels. Still a function of (seed, global row,
    labels), never of the world size. Raises ValueError for inconsistent arguments or a
    label outside 0..len(before)-1.
    """
    if not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"The 'folds' argument of fold_of must be an int >= 2. "
                         f"Got {folds!r} instead.")
    if not 0 <= lo <= hi:
        raise ValueError(f"fold_of needs 0 <= lo <= hi; got lo={lo}, hi={hi}.")
    if labels is None:
        return _group_folds(lo, hi, int(folds), _fold_key(seed, 0))
    labels = np.asarray(labels)
    before = np.asarray(before if before is not None else (), dtype=np.int64).reshape(-1)
    if labels.shape != (hi - lo,) or before.size == 0:
        raise ValueError(f"fold_of needs labels of shape ({hi - lo},) and 'before' with one "
                         f"count per class; got labels {labels.shape}, before {before.shape}.")
    n_classes = before.size
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"fold_of: labels must be 0..{n_classes - 1}; found "
                         f"{labels.min()}..{labels.max()}.")
    out = np.empty(hi - lo, dtype=np.int64)
    # A stable sort by label keeps each class's rows in row order, i.e. in the order
    # of their class's sequence.
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_classes + 1))
    for c in np.flatnonzero(np.diff(bounds)):
        rows = order[bounds[c]:bounds[c + 1]]
        first = int(before[c])
        out[rows] = _group_folds(first, first + rows.size, int(folds), _fold_key(seed, c + 1))
    return out


def _fold_key(seed: int, stream: int) -> np.uint64:
    """Hash key of one fold stream (0: unstratified, c+1: class c), unrelated to
    holdout_mask's key so that folds and a held-out fraction do not correlate."""
    base = _splitmix64(np.array([seed], dtype=np.uint64))[0] ^ np.uint64(0x666F6C64)
    return _splitmix64(np.array([base + np.uint64(stream)], dtype=np.uint64))[0]


def _group_folds(a: int, b: int, folds: int, key: np.uint64) -> np.ndarray:
    """Folds of sequence positions [a, b): the positions of each group of ``folds`` take
    folds 0..folds-1 in the order of their hashes (a uniform random permutation per
    group). Computed over the whole groups that [a, b) touches, then cut to [a, b)."""
    if b <= a:
        return np.empty(0, dtype=np.int64)
    g0, g1 = a // folds, -(-b // folds)
    pos = np.arange(g0 * folds, g1 * folds, dtype=np.uint64)
    h = _splitmix64(pos ^ key).reshape(g1 - g0, folds)
    order = np.argsort(h, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(folds), order.shape), axis=1)
    return rank.reshape(-1)[a - g0 * folds:b - g0 * folds]

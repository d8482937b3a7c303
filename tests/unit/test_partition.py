"""Row ownership and the per-step schedule: pure functions, checked without MPI."""

import numpy as np
import pytest

from mpisgd.data.partition import (
    block_range,
    epoch_permutation,
    holdout_mask,
    local_schedule,
    steps_per_epoch,
)
from mpisgd.kernels.schedule import epoch_schedule


@pytest.mark.parametrize("n, size", [(10, 1), (10, 3), (1003, 4), (7, 7), (1000, 8)])
def test_blocks_cover_rows_once(n, size):
    ranges = [block_range(n, size, r) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    lengths = [hi - lo for lo, hi in ranges]
    assert max(lengths) - min(lengths) <= 1


def test_holdout_is_independent_of_blocks():
    whole = holdout_mask(0, 5000, 0.2, seed=3)
    parts = np.concatenate([holdout_mask(*block_range(5000, 3, r), 0.2, seed=3)
                            for r in range(3)])
    np.testing.assert_array_equal(whole, parts)
    assert 0.17 < whole.mean() < 0.23
    assert not holdout_mask(0, 100, 0.0, seed=3).any()
    assert not np.array_equal(whole, holdout_mask(0, 5000, 0.2, seed=4))


@pytest.mark.parametrize("n, size, batch", [(1003, 4, 64), (1003, 3, 1000), (50, 7, 8),
                                            (999, 8, 999), (10, 3, 1)])
def test_every_row_once_and_global_batches_match(n, size, batch):
    perm = epoch_permutation(n, seed=5, epoch=2, shuffle=True)
    spe = steps_per_epoch(n, batch)
    per_step = [[] for _ in range(spe)]
    for rank in range(size):
        first, stop = block_range(n, size, rank)
        order, offsets = local_schedule(perm, first, stop - first, batch)
        assert offsets.shape == (spe + 1,)
        for t in range(spe):
            local = order[offsets[t]:offsets[t + 1]]
            assert np.all(np.diff(local) > 0)  # ascending: memory order
            per_step[t].extend((local + first).tolist())
    seen = np.concatenate([np.array(s, dtype=np.int64) for s in per_step])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    for t in range(spe):  # step t's rows are the same global minibatch at any size
        expected = np.sort(perm[t * batch:(t + 1) * batch])
        np.testing.assert_array_equal(np.sort(per_step[t]), expected)


def test_permutation_depends_on_seed_and_epoch_only():
    a = epoch_permutation(100, 1, 0, True)
    np.testing.assert_array_equal(a, epoch_permutation(100, 1, 0, True))
    assert not np.array_equal(a, epoch_permutation(100, 1, 1, True))
    assert not np.array_equal(a, epoch_permutation(100, 2, 0, True))
    np.testing.assert_array_equal(epoch_permutation(5, 1, 0, False), np.arange(5))


def test_rank_without_rows_still_takes_every_step():
    order, offsets = local_schedule(np.arange(10), 0, 0, 3)
    assert order.size == 0 and offsets.shape == (5,) and not offsets.any()


@pytest.mark.parametrize("n, size, batch", [(1003, 4, 64), (1003, 3, 1000), (50, 7, 8),
                                            (999, 8, 999), (10, 3, 1), (7, 9, 2),
                                            (100_000, 3, 1024)])
def test_the_compiled_schedule_is_the_reference_schedule(n, size, batch):
    """kernels.schedule (per-row Feistel positions, counting sort) against data.partition's
    permutation and sort."""
    for shuffle, block in ((True, 1), (False, 1), (True, 7), (True, 64)):
        for epoch in (0, 1):
            perm = epoch_permutation(n, seed=3, epoch=epoch, shuffle=shuffle, block=block)
            for rank in range(size):
                first, stop = block_range(n, size, rank)
                want = local_schedule(perm, first, stop - first, batch)
                got = epoch_schedule(n, 3, epoch, shuffle, first, stop - first, batch, block)
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="do not fit"):
        epoch_schedule(n, 3, 0, True, n - 1, 2, batch)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 65, 1000, 4097])
def test_the_epoch_order_is_a_permutation_that_mixes(n):
    perm = epoch_permutation(n, seed=0, epoch=0, shuffle=True)
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    if n >= 1000:   # far from the identity, and every epoch differs
        assert np.mean(perm == np.arange(n)) < 0.01
        assert abs(np.corrcoef(perm, np.arange(n))[0, 1]) < 0.1
        assert not np.array_equal(perm, epoch_permutation(n, seed=0, epoch=1, shuffle=True))


@pytest.mark.parametrize("n, block", [(1000, 64), (1024, 64), (65, 64), (10, 3), (5, 8)])
def test_a_block_shuffle_visits_whole_blocks_in_a_random_order(n, block):
    perm = epoch_permutation(n, seed=1, epoch=2, shuffle=True, block=block)
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    # cut the order where it jumps: every run is one whole block, in sequence
    runs = np.split(perm, np.flatnonzero(np.diff(perm) != 1) + 1)
    starts = sorted(int(r[0]) for r in runs)
    assert starts == list(range(0, n, block)) or len(runs) < -(-n // block)
    assert all(r[0] % block == 0 and len(r) == min(block, n - r[0]) or len(r) > block
               for r in runs)
    if n >= 1000:
        blocks = [int(r[0]) // block for r in runs]
        assert blocks != sorted(blocks)   # shuffled
        assert not np.array_equal(perm, epoch_permutation(n, 1, 3, True, block))

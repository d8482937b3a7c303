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
from mpisgd.kernels.schedule import local_schedule as fast_schedule


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
def test_the_linear_time_schedule_is_the_reference_schedule(n, size, batch):
    """kernels.schedule (two passes, counting sort) against data.partition's sort."""
    for shuffle in (True, False):
        perm = epoch_permutation(n, seed=3, epoch=1, shuffle=shuffle)
        for rank in range(size):
            first, stop = block_range(n, size, rank)
            want = local_schedule(perm, first, stop - first, batch)
            got = fast_schedule(perm, first, stop - first, batch)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="do not fit"):
        fast_schedule(perm, n - 1, 2, batch)

"""Node-shared arrays and the hierarchical allreduce, launched under mpiexec with a timeout.

Layouts: 8 ranks as 4 emulated nodes of 2 and as 2 of 4, 3 ranks on the one real node,
5 ranks as nodes of 2, 2 and 1, and the private fallback (MPISGD_NO_SHM=1).
"""

import json
from pathlib import Path

import pytest

from mpisgd.comm import reduce as R
from mpisgd.comm.reduce import auto_method, chunk_elements, column_slice

SCRIPT = str(Path(__file__).with_name("shm_script.py"))


@pytest.mark.parametrize("n", [0, 1, 7, 15, 16, 17, 1000, 10**6 + 3])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("itemsize", [4, 8])
def test_column_slices_tile_the_columns_on_cache_lines(n, parts, itemsize):
    slices = [column_slice(n, parts, k, itemsize) for k in range(parts)]
    assert slices[0][0] == 0 and slices[-1][1] == n
    for (lo, hi), (lo2, _) in zip(slices, slices[1:]):
        assert lo <= hi == lo2
    for lo, _ in slices:
        assert lo == n or (lo * itemsize) % 64 == 0


@pytest.mark.parametrize("local", [2, 4, 8])
@pytest.mark.parametrize("itemsize", [4, 8])
@pytest.mark.parametrize("crowded", [False, True])
def test_chunks_are_cache_lines_and_keep_the_window_in_budget(local, itemsize, crowded):
    single = R.CROWDED_WINDOW_BYTES if crowded else R.SINGLE_WINDOW_BYTES
    budget = R.CROWDED_WINDOW_BYTES if crowded else R.CHUNK_WINDOW_BYTES
    for n in (1, 7, 1000, 10**6, 10**7 + 1, 10**8):
        width = chunk_elements(n, local, itemsize, crowded)
        assert (width * itemsize) % 64 == 0 and width >= min(n, local)
        if width < n:   # chunked: two row slots and three result slots fit the budget
            assert (2 * local + 3) * width * itemsize <= budget
            assert (local + 1) * n * itemsize > single
        else:           # one chunk: a row per rank and the result row
            assert (local + 1) * width * itemsize <= single + 64 * (local + 1)


def test_auto_picks_flat_for_small_buffers_lone_ranks_and_uncached_windows():
    small, big = R.HIERARCHICAL_MIN_BYTES - 1, R.HIERARCHICAL_MIN_BYTES
    assert auto_method(small, 8, True) == "flat"
    assert auto_method(big, 1, True) == "flat"          # no node has two ranks
    assert auto_method(big, 8, False) == "hierarchical"
    huge = R.AUTO_WINDOW_BYTES // 2                      # 3 rows of it: over the budget
    assert auto_method(huge, 2, False) == "flat"
    assert auto_method(huge, 2, True) == "hierarchical"  # crowded: MPI's rounds cost more


LAYOUTS = [
    pytest.param(8, {"MPISGD_RANKS_PER_NODE": "2"}, 4, "shared", 200, id="8-as-4x2"),
    pytest.param(8, {"MPISGD_RANKS_PER_NODE": "4"}, 2, "shared", 200, id="8-as-2x4"),
    pytest.param(3, {}, 1, "shared", 200, id="3-real-node"),
    pytest.param(5, {"MPISGD_RANKS_PER_NODE": "2"}, 3, "shared", 50, id="5-as-2+2+1"),
    pytest.param(4, {"MPISGD_RANKS_PER_NODE": "2", "MPISGD_NO_SHM": "1"}, 2, "private", 50,
                 id="4-no-shm"),
]


@pytest.mark.parametrize("size, env, nodes, kind, cycles", LAYOUTS)
def test_hierarchical_allreduce(launch, size, env, nodes, kind, cycles):
    env = {"MPISGD_NO_SHM": "0", **env}
    result = launch(size, [SCRIPT, str(cycles)], module=False, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK {size} {nodes} {kind}" in result.stdout, result.stdout
    line = next(x for x in result.stdout.splitlines() if x.startswith("WINDOWS "))
    windows = json.loads(line.split(" ", 1)[1])
    allocated = [b for b in windows["bytes"] if b]
    # The reducer's window for 1000 float64: a row per rank of the node plus the result row;
    # a node of one rank needs none.
    peers = [s for s in _node_sizes(windows["local_sizes"]) if s > 1]
    if kind == "shared":   # once per node, on its first rank
        assert allocated == [(s + 1) * 8000 for s in peers], windows
    else:                  # the fallback sends messages and keeps no window
        assert "fall back to private copies" in result.stderr
        assert allocated == [], windows


def _node_sizes(local_sizes: list[int]) -> list[int]:
    """Sizes of the nodes in order: emulated and single nodes are runs of consecutive ranks."""
    sizes, start = [], 0
    while start < len(local_sizes):
        sizes.append(local_sizes[start])
        start += local_sizes[start]
    return sizes

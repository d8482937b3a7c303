"""A rank's share of its node: numba threads and memory for its data block.

Imports numba: set ``NUMBA_CACHE_DIR`` (:func:`mpisgd.runtime.paths.set_numba_cache_dir`)
before importing this module.
"""

from __future__ import annotations

import contextlib
import os

import numba

from mpisgd.errors import ConfigError


@contextlib.contextmanager
def rank_threads(local_size: int):
    """Numba threads for this rank while the block runs (``local_size``: ranks on this
    node); the previous count after."""
    before = numba.get_num_threads()
    numba.set_num_threads(min(numba_threads_for(local_size), numba.config.NUMBA_NUM_THREADS))
    try:
        yield numba.get_num_threads()
    finally:
        numba.set_num_threads(before)


def numba_threads_for(local_size: int) -> int:
    """Threads per rank = cores of this node / ranks on it (at least 1).

    ``MPISGD_NUM_THREADS`` overrides. Oversubscribing cores with threads of several
    ranks makes every rank slower, never faster.
    """
    env = os.environ.get("MPISGD_NUM_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"MPISGD_NUM_THREADS must be a positive integer, got {env!r}.",
                              agreed=True)
        return value
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_size))


def memory_budget(local_size: int) -> int:
    """Bytes one rank may use for its data block: 80 % of the node's available memory
    shared by its ranks (``MPISGD_MEMORY_BUDGET`` overrides, bytes per rank)."""
    env = os.environ.get("MPISGD_MEMORY_BUDGET", "")
    if env:
        return int(env)
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 1 << 62   # unknown: assume it fits
    return int(0.8 * available / max(local_size, 1))

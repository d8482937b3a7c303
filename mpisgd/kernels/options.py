"""Numba options for every kernel, and the fixed row-block split that keeps them deterministic."""

from __future__ import annotations

import sys

import numba

# When numba first types a function it checks for a BLAS by importing scipy.linalg: 0.2-0.3
# s per process when SciPy is installed (scikit-learn brings it), before any cached kernel
# loads; 8 ranks on 2 cores pay it 4 times per core. No mpisgd kernel calls BLAS from numba
# code (np.dot, np.linalg), so that check is done here, once, with scipy.linalg hidden:
# numba then records "no BLAS" and the first kernel call drops from 0.34-0.44 s to 0.14-0.15
# s (docs/performance.md). Skipped when scipy.linalg is already loaded (nothing to save).
if "numba.np.arraymath" not in sys.modules and "scipy.linalg" not in sys.modules:
    sys.modules["scipy.linalg"] = None   # makes `import scipy.linalg...` raise ImportError
    try:
        import numba.np.arraymath
    finally:
        del sys.modules["scipy.linalg"]

# 'reassoc' lets LLVM split the per-row dot products into SIMD lanes and 'contract' allows
# FMA. Never the full fastmath set: its 'nnan'/'ninf' would let LLVM assume NaN and Inf away, and
# the trainer must see them in the loss and the gradient.
JIT = dict(nogil=True, cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
PJIT = dict(JIT, parallel=True)

# A parallel kernel splits its rows into blocks whose number depends only on the row and
# parameter counts, never on the thread count; each block owns one accumulator row, and the
# blocks are summed serially in block order, so the result is bitwise identical for any
# number of threads.
BLOCK_ROWS = 2048
MAX_BLOCKS = 64
MAX_ACC_BYTES = 64 << 20  # caps the (blocks, P) float64 buffer of a large softmax
# Within a block, gradients are summed in X's dtype over chunks of CHUNK_ROWS rows, then folded
# into the float64 block row: float32 keeps the per-row axpy at full SIMD width (a float64
# accumulator costs ~30% of throughput on float32 data), the fold stops rounding error from
# growing with the block length.
CHUNK_ROWS = 128


def njit(fn=None, **extra):
    """``numba.njit`` with the project options (``extra`` overrides them); with or without ()."""
    decorator = numba.njit(**{**JIT, **extra})
    return decorator if fn is None else decorator(fn)


def pjit(fn=None, **extra):
    """Like :func:`njit`, with ``parallel=True``: use only with disjoint blocks reduced serially."""
    return njit(fn, **{"parallel": True, **extra})


@njit
def n_blocks(m, p):
    """Number of row blocks for ``m`` rows and ``p`` parameters: a function of (m, p) alone."""
    return max(1, min(MAX_BLOCKS, (m + BLOCK_ROWS - 1) // BLOCK_ROWS, MAX_ACC_BYTES // (8 * p)))


@njit
def block_range(m, nb, k):
    """Half-open range ``[lo, hi)`` of block ``k`` of ``nb`` over ``m`` rows."""
    return k * m // nb, (k + 1) * m // nb


@njit
def fold(part, acc):
    """acc += part (acc is float64), then zero ``part`` for the next chunk."""
    for j in range(part.shape[0]):
        acc[j] += part[j]
        part[j] = 0


@njit
def reduce_blocks(acc, losses, grad_out):
    """Sum block rows of ``acc`` into ``grad_out`` and return the sum of ``losses``, in block order.

    Sums in place into ``acc[0]`` (float64) so nothing is allocated; ``grad_out`` may be float32.
    """
    nb, p = acc.shape
    for k in range(1, nb):
        for j in range(p):
            acc[0, j] += acc[k, j]
    for j in range(p):
        grad_out[j] = acc[0, j]
    loss = 0.0
    for k in range(nb):
        loss += losses[k]
    return loss


"""Logistic regression kernels: binary cross-entropy with logits, theta = [w (d), b], y 0/1."""

from __future__ import annotations

import numpy as np
from numba import prange

from mpisgd.kernels.linear import _affine, _axpy_rows
from mpisgd.kernels.options import (
    CHUNK_ROWS,
    block_range,
    fold,
    n_blocks,
    njit,
    pjit,
    reduce_blocks,
)
from mpisgd.kernels.vmath import exp_nonpos, log1p_unit


@njit
def _sigmoid(z):
    """1 / (1 + exp(-z)) without overflow for either sign of z (float64)."""
    e = np.exp(-abs(z))
    return (1.0 if z >= 0.0 else e) / (1.0 + e)


@njit
def _chunk(X, y, idx, lo, hi, theta, part, z, e, bits, r):
    """Add the gradients of rows idx[lo:hi] to ``part``; return their loss sum (float64).

    Passes over the chunk (logits, exp, losses, axpys): the exp/log1p of a row no longer
    sits between its dot and axpy, and the middle passes are SIMD loops over the chunk
    (:mod:`mpisgd.kernels.vmath`) instead of one C-library call per value.
    """
    n = hi - lo
    for t in range(lo, hi):
        z[t - lo] = _affine(X, idx[t], theta)
    for t in range(n):
        e[t] = -abs(z[t])
    exp_nonpos(e[:n], e[:n], bits[:n])
    loss = 0.0
    for t in range(n):
        zt, et = z[t], e[t]
        yt = np.float64(y[idx[lo + t]])
        # log(1 + exp(-|z|)) + max(z, 0) - y z: never overflows, exact for large |z|.
        loss += log1p_unit(et) + max(zt, 0.0) - yt * zt
        r[t] = ((1.0 if zt >= 0.0 else et) / (1.0 + et)) - yt
    _axpy_rows(X, idx, lo, hi, r, part)
    return loss


@njit
def _block(X, y, idx, lo, hi, theta, acc):
    """Add the gradients of rows idx[lo:hi] to ``acc`` (float64) chunk by chunk; return the loss."""
    part = np.zeros(acc.shape[0], X.dtype)
    z = np.empty(CHUNK_ROWS)
    e = np.empty(CHUNK_ROWS)
    bits = np.empty(CHUNK_ROWS, np.int64)
    r = np.empty(CHUNK_ROWS, X.dtype)
    loss = 0.0
    for c in range(lo, hi, CHUNK_ROWS):
        loss += _chunk(X, y, idx, c, min(c + CHUNK_ROWS, hi), theta, part, z, e, bits, r)
        fold(part, acc)
    return loss


@pjit
def _loss_grad(X, y, idx, theta, grad_out):
    """Overwrite ``grad_out`` with the gradient sum over rows ``idx``; return the loss sum."""
    m = idx.shape[0]
    nb = n_blocks(m, theta.shape[0])
    acc = np.zeros((nb, theta.shape[0]))
    losses = np.zeros(nb)
    for k in prange(nb):
        lo, hi = block_range(m, nb, k)
        losses[k] = _block(X, y, idx, lo, hi, theta, acc[k])
    return reduce_blocks(acc, losses, grad_out)


@pjit
def _predict_proba(X, theta, out):
    """out[i] = P(y=1 | x_i) (rows are independent, so any split is deterministic)."""
    for i in prange(X.shape[0]):
        out[i] = _sigmoid(np.float64(_affine(X, i, theta)))

"""Softmax regression kernels: cross-entropy over C classes, theta = [W (C, d) row-major, b (C)]."""

from __future__ import annotations

import numpy as np
from numba import prange

from mpisgd.kernels.options import (
    CHUNK_ROWS,
    block_range,
    fold,
    n_blocks,
    njit,
    pjit,
    reduce_blocks,
)
from mpisgd.kernels.vmath import exp_nonpos


@njit
def _split(v, d):
    """Views (W (C, d), b (C)) of a flat [W, b] vector. 2-D indexing keeps every loop index
    non-negative, so numba emits no wraparound select and the inner loops vectorise."""
    C = v.shape[0] // (d + 1)
    return v[: C * d].reshape((C, d)), v[C * d :]


@njit
def _logits(X, i, W, b, z):
    """z[c] = x_i . W[c] + b[c] (float64 z, dots in X's dtype)."""
    for c in range(W.shape[0]):
        s = b[c]
        for j in range(X.shape[1]):
            s += X[i, j] * W[c, j]
        z[c] = s


@njit
def _softmax(z, p):
    """p = softmax(z) (p may be z); return log-sum-exp(z). The max is subtracted so exp()
    cannot overflow, and each exp is computed once."""
    zmax = -np.inf
    for c in range(z.shape[0]):
        zmax = max(zmax, z[c])
    total = 0.0
    for c in range(z.shape[0]):
        p[c] = np.exp(z[c] - zmax)
        total += p[c]
    inv = 1.0 / total  # one division per row instead of C
    for c in range(z.shape[0]):
        p[c] *= inv
    return zmax + np.log(total)


@njit
def _quad(idx, t, hi):
    """Rows idx[t:t+4]; past ``hi`` the last row is repeated. Its repeats get zero residuals,
    so they add nothing (if that row holds Inf, its own term is already non-finite)."""
    last = hi - 1
    return idx[t], idx[min(t + 1, last)], idx[min(t + 2, last)], idx[min(t + 3, last)]


@njit
def _dot4(X, i0, i1, i2, i3, w, b):
    """x_i . w + b for four rows: four independent sums share each load of w."""
    s0 = s1 = s2 = s3 = b
    for j in range(w.shape[0]):
        wj = w[j]
        s0 += X[i0, j] * wj
        s1 += X[i1, j] * wj
        s2 += X[i2, j] * wj
        s3 += X[i3, j] * wj
    return s0, s1, s2, s3


@njit
def _axpy4(X, i0, i1, i2, i3, r0, r1, r2, r3, g):
    """g += r0 x_i0 + r1 x_i1 + r2 x_i2 + r3 x_i3: one load and store of g per four rows."""
    for j in range(g.shape[0]):
        g[j] += (r0 * X[i0, j] + r1 * X[i1, j]) + (r2 * X[i2, j] + r3 * X[i3, j])
    return (r0 + r1) + (r2 + r3)


@njit
def _chunk(X, y, idx, lo, hi, W, b, gW, gb, Z, R, E, M, bits):
    """Add the gradients of rows idx[lo:hi] to (gW, gb); return their loss sum (float64).

    Three passes over the chunk (logits, softmax, axpys) four rows at a time, so the exps of
    a row do not stall its axpys and each load of W or of gW serves four rows; the chunk's
    exps are one SIMD loop (:mod:`mpisgd.kernels.vmath`). ``Z``, ``E`` float64 and ``R``
    (X's dtype) are (CHUNK_ROWS + 4, C) scratch, ``M`` float64 and ``bits`` int64 hold a
    value per row and per logit.
    """
    C = W.shape[0]
    n = hi - lo
    for t in range(lo, hi, 4):
        i0, i1, i2, i3 = _quad(idx, t, hi)
        k = t - lo
        for c in range(C):
            Z[k, c], Z[k + 1, c], Z[k + 2, c], Z[k + 3, c] = _dot4(X, i0, i1, i2, i3, W[c], b[c])
    loss = 0.0
    for t in range(n):   # shift each row by its max, so that every exp argument is <= 0
        zmax = -np.inf
        for c in range(C):
            zmax = max(zmax, Z[t, c])
        M[t] = zmax
        for c in range(C):
            E[t, c] = Z[t, c] - zmax
    flat = E.reshape(-1)[: n * C]
    exp_nonpos(flat, flat, bits[: n * C])   # the chunk's n C exps as one SIMD loop
    for t in range(n):
        total = 0.0
        for c in range(C):
            total += E[t, c]
        yt = y[idx[lo + t]]
        loss += M[t] + np.log(total) - Z[t, yt]
        inv = 1.0 / total  # one division per row instead of C
        for c in range(C):
            R[t, c] = E[t, c] * inv   # dloss/dlogits = p - onehot(y)
        R[t, yt] -= 1.0
    R[n : n + 4] = 0
    for t in range(lo, hi, 4):
        i0, i1, i2, i3 = _quad(idx, t, hi)
        k = t - lo
        for c in range(C):
            r0, r1, r2, r3 = R[k, c], R[k + 1, c], R[k + 2, c], R[k + 3, c]
            gb[c] += _axpy4(X, i0, i1, i2, i3, r0, r1, r2, r3, gW[c])
    return loss


@njit
def _block(X, y, idx, lo, hi, theta, acc):
    """Add the gradients of rows idx[lo:hi] to ``acc`` (float64) chunk by chunk; return the loss."""
    d = X.shape[1]
    W, b = _split(theta, d)
    part = np.zeros(acc.shape[0], X.dtype)
    gW, gb = _split(part, d)
    Z = np.empty((CHUNK_ROWS + 4, b.shape[0]))
    R = np.empty((CHUNK_ROWS + 4, b.shape[0]), X.dtype)
    E = np.empty((CHUNK_ROWS + 4, b.shape[0]))
    M = np.empty(CHUNK_ROWS + 4)
    bits = np.empty((CHUNK_ROWS + 4) * b.shape[0], np.int64)
    loss = 0.0
    for c in range(lo, hi, CHUNK_ROWS):
        loss += _chunk(X, y, idx, c, min(c + CHUNK_ROWS, hi), W, b, gW, gb, Z, R, E, M,
                       bits)
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


@njit
def _proba_rows(X, lo, hi, theta, out):
    """out[i] = softmax of the logits of row i, for i in [lo, hi)."""
    W, b = _split(theta, X.shape[1])
    z = np.empty(b.shape[0])
    for i in range(lo, hi):
        _logits(X, i, W, b, z)
        _softmax(z, z)
        for c in range(b.shape[0]):
            out[i, c] = z[c]


@pjit
def _predict_proba(X, theta, out):
    """out (n, C) = class probabilities; blocks only amortise the scratch buffer."""
    n = X.shape[0]
    nb = n_blocks(n, 1)
    for k in prange(nb):
        lo, hi = block_range(n, nb, k)
        _proba_rows(X, lo, hi, theta, out)

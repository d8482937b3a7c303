"""Softmax loss+gradient and predict over CSR rows (the minibatch and ``remap`` conventions
of :mod:`mpisgd.kernels.csr`).

The keys' weights are key-major, W (K, C): row k holds the C class weights of keys[k],
and the bias is b (C). That is what a parameter server stores and moves for a sparse
model: pulling or pushing a key is one contiguous slice of C values, and each non-zero
of a row reads (logits) and writes (gradient) one contiguous row of C, a single cache
line for C <= 8 in float64, where the dense layout [W (C, d), b (C)] would touch C lines
d apart. The dense kernels keep (C, d) because they loop over the features of one
class at a time; a dense theta given to the sparse wrappers keeps that layout too (the
model file's), and only the keys' rows are gathered from it.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from mpisgd.kernels.options import CHUNK_ROWS, block_range, n_blocks, njit, pjit, reduce_blocks
from mpisgd.kernels.softmax import _softmax
from mpisgd.kernels.vmath import exp_nonpos


@njit
def _logits_keys(values, p, remap, q, n, W, b, z):
    """z[c] = b[c] + sum_j values[p + j] * W[remap[q + j], c] (W key-major (K, C))."""
    for c in range(b.shape[0]):
        z[c] = b[c]
    for j in range(n):
        v = np.float64(values[p + j])
        row = remap[q + j]
        for c in range(b.shape[0]):
            z[c] += v * W[row, c]


@njit
def _logits_dense(values, p, indices, n, W, b, z):
    """z[c] = b[c] + sum_j values[p + j] * W[c, indices[p + j]] (W class-major (C, d))."""
    for c in range(b.shape[0]):
        s = np.float64(b[c])
        for j in range(n):
            s += np.float64(values[p + j]) * W[c, indices[p + j]]
        z[c] = s


@njit
def _chunk(indptr, values, y, idx, starts, remap, W, b, lo, hi, G, gb, Z, M, bits):
    """Add the gradients of rows idx[lo:hi] to (G (K, C), gb (C)); return their loss sum.

    Logits of the whole chunk, shifted by each row's max so that every exp argument is
    <= 0, then the chunk's n C exps as one SIMD loop, then the scatter. ``Z`` (CHUNK_ROWS,
    C) and ``M`` (CHUNK_ROWS) float64, ``bits`` int64 (CHUNK_ROWS C) are scratch.
    """
    C = b.shape[0]
    n = hi - lo
    for t in range(lo, hi):
        q = starts[t]
        _logits_keys(values, indptr[idx[t]], remap, q, starts[t + 1] - q, W, b, Z[t - lo])
    for t in range(n):
        zmax = -np.inf
        for c in range(C):
            zmax = max(zmax, Z[t, c])
        for c in range(C):
            Z[t, c] -= zmax
        M[t] = Z[t, y[idx[lo + t]]]   # the label's shifted logit
    flat = Z.reshape(-1)[: n * C]
    exp_nonpos(flat, flat, bits[: n * C])
    loss = 0.0
    for t in range(n):
        total = 0.0
        for c in range(C):
            total += Z[t, c]
        loss += np.log(total) - M[t]
        inv = 1.0 / total
        for c in range(C):
            Z[t, c] *= inv    # dloss/dlogits = p - onehot(y)
        Z[t, y[idx[lo + t]]] -= 1.0
        p = indptr[idx[lo + t]]
        q = starts[lo + t]
        for j in range(starts[lo + t + 1] - q):
            v = np.float64(values[p + j])
            row = remap[q + j]
            for c in range(C):
                G[row, c] += v * Z[t, c]
        for c in range(C):
            gb[c] += Z[t, c]
    return loss


@njit
def _block(indptr, values, y, idx, starts, remap, W, b, lo, hi, acc):
    """Add the gradients of rows idx[lo:hi] to ``acc`` ((K + 1) C: keys' rows, then the
    bias); return the loss."""
    K, C = W.shape
    G = acc[: K * C].reshape((K, C))
    gb = acc[K * C :]
    Z = np.empty((CHUNK_ROWS, C))
    M = np.empty(CHUNK_ROWS)
    bits = np.empty(CHUNK_ROWS * C, np.int64)
    loss = 0.0
    for c in range(lo, hi, CHUNK_ROWS):
        loss += _chunk(indptr, values, y, idx, starts, remap, W, b, c, min(c + CHUNK_ROWS, hi),
                       G, gb, Z, M, bits)
    return loss


@pjit
def loss_grad(indptr, values, y, idx, starts, remap, W, b, grad_out):
    """Softmax cross-entropy over rows ``idx`` with key-major W (K, C) and bias b (C);
    overwrites grad_out ((K + 1) C: G (K, C) row-major, then the bias's C); returns the
    loss sum."""
    m = idx.shape[0]
    p = (W.shape[0] + 1) * W.shape[1]
    nb = n_blocks(m, p)
    acc = np.zeros((nb, p))
    losses = np.zeros(nb)
    for k in prange(nb):
        lo, hi = block_range(m, nb, k)
        losses[k] = _block(indptr, values, y, idx, starts, remap, W, b, lo, hi, acc[k])
    return reduce_blocks(acc, losses, grad_out)


@pjit
def predict_keys(indptr, values, idx, starts, remap, W, b, out):
    """out (m, C) = class probabilities of rows idx from key-major W (K, C); blocks only
    amortise the scratch buffer."""
    m = idx.shape[0]
    nb = n_blocks(m, 1)
    for k in prange(nb):
        lo, hi = block_range(m, nb, k)
        z = np.empty(b.shape[0])
        for t in range(lo, hi):
            q = starts[t]
            _logits_keys(values, indptr[idx[t]], remap, q, starts[t + 1] - q, W, b, z)
            _softmax(z, z)
            for c in range(b.shape[0]):
                out[t, c] = z[c]


@pjit
def predict_theta(indptr, indices, values, idx, theta, out):
    """out (m, C) = class probabilities of rows idx from a dense theta = [W (C, d), b (C)]."""
    m, C = out.shape
    d = theta.shape[0] // C - 1
    W = theta[: C * d].reshape((C, d))
    b = theta[C * d :]
    nb = n_blocks(m, 1)
    for k in prange(nb):
        lo, hi = block_range(m, nb, k)
        z = np.empty(C)
        for t in range(lo, hi):
            i = idx[t]
            p = indptr[i]
            _logits_dense(values, p, indices, indptr[i + 1] - p, W, b, z)
            _softmax(z, z)
            for c in range(C):
                out[t, c] = z[c]

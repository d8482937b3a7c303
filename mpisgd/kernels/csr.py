"""Numba kernels over CSR rows: a minibatch's unique keys, and the linear and logistic
loss+gradient and predict kernels (softmax: :mod:`mpisgd.kernels.csr_softmax`).

A minibatch is a list ``idx`` of rows of one CSR block (indptr, indices, values). Its
non-zeros, taken row after row in ``idx`` order, are numbered q = 0, 1, ...: row t owns
q in [starts[t], starts[t + 1]). ``keys`` are the sorted unique feature ids of those
non-zeros and ``remap[q]`` the position of non-zero q's feature in ``keys``, so the loss
loops read and write arrays of len(keys) by plain indexing, never through a hash map. The
wrappers of :mod:`mpisgd.kernels.sparse` check every array first; nothing here does.

Sums are float64 throughout (dots, residuals, the per-key accumulators): a sparse row is a
gather that SIMD does not speed up, so the wider type costs nothing measurable here, unlike
in the dense kernels. Determinism as in the dense kernels: the rows of ``idx`` are split in
``n_blocks(m, len(keys) + 1)`` blocks whatever the thread count, each block adds into its
own accumulator row, and the rows are summed in block order.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from mpisgd.kernels.options import CHUNK_ROWS, block_range, n_blocks, njit, pjit, reduce_blocks
from mpisgd.kernels.vmath import exp_nonpos, log1p_unit

KEY_LIMIT = 1 << 32          # feature ids are in [0, 2^32): a key and q pack in one uint64
_SHIFT = np.uint64(32)
_LOW = np.uint64(KEY_LIMIT - 1)


@njit
def batch_starts(indptr, n_indices, idx, starts):
    """starts[t + 1] = starts[t] + the length of row idx[t] (starts: int64, m + 1).

    Returns the position in ``idx`` of the first row whose indptr pair is not
    0 <= indptr[i] <= indptr[i + 1] <= n_indices (it would read outside ``indices``), or -1.
    """
    starts[0] = 0
    for t in range(idx.shape[0]):
        i = idx[t]
        lo, hi = indptr[i], indptr[i + 1]
        if lo < 0 or hi < lo or hi > n_indices:
            return t
        starts[t + 1] = starts[t] + (hi - lo)
    return -1


@njit
def pack_keys(indptr, indices, idx, starts, packed):
    """packed[q] = key << 32 | q for every non-zero q of the minibatch; returns the first q
    whose key is outside [0, 2^32), or -1."""
    for t in range(idx.shape[0]):
        p = indptr[idx[t]]
        q0 = starts[t]
        for j in range(starts[t + 1] - q0):
            key = np.int64(indices[p + j])
            if key < 0 or key >= KEY_LIMIT:
                return q0 + j
            packed[q0 + j] = (np.uint64(key) << _SHIFT) | np.uint64(q0 + j)
    return -1


@njit
def unpack_keys(packed, keys, remap):
    """From ``packed`` sorted: the unique keys into ``keys`` (returns how many) and, for
    each non-zero q, remap[q] = the position of its key in ``keys``."""
    n = 0
    last = np.int64(-1)
    for s in range(packed.shape[0]):
        v = packed[s]
        key = np.int64(v >> _SHIFT)
        if key != last:
            keys[n] = key
            n += 1
            last = key
        remap[np.int64(v & _LOW)] = n - 1
    return n


@njit
def count_out_of(a, limit):
    """How many entries of ``a`` are outside [0, limit): a branch-free count that LLVM
    vectorises (the wrappers look for the first one only when it is not 0)."""
    bad = 0
    for k in range(a.shape[0]):
        bad += (a[k] < 0) | (a[k] >= limit)
    return bad


@njit
def count_not_increasing(keys):
    """How many keys are not strictly above the one before them (vectorised, as above)."""
    bad = 0
    for k in range(1, keys.shape[0]):
        bad += keys[k] <= keys[k - 1]
    return bad


@njit
def row_dot(values, p, cols, q, n, w, b):
    """b + sum_j values[p + j] * w[cols[q + j]] for j < n, in float64. With cols = remap
    (q = starts[t]) w is a keys' vector; with cols = indices (q = p) a dense one."""
    s = np.float64(b)
    for j in range(n):
        s += np.float64(values[p + j]) * np.float64(w[cols[q + j]])
    return s


@njit
def _dots(indptr, values, idx, starts, remap, w, b, lo, hi, z):
    for t in range(lo, hi):
        q = starts[t]
        z[t - lo] = row_dot(values, indptr[idx[t]], remap, q, starts[t + 1] - q, w, b)


@njit
def _scatter(indptr, values, idx, starts, remap, lo, hi, r, g):
    """g[remap[q]] += r_t * value_q over the non-zeros of rows t in [lo, hi); returns the
    sum of r (the bias gradient)."""
    rb = 0.0
    for t in range(lo, hi):
        rt = r[t - lo]
        p = indptr[idx[t]]
        q = starts[t]
        for j in range(starts[t + 1] - q):
            g[remap[q + j]] += rt * values[p + j]
        rb += rt
    return rb


@njit
def _linear_chunk(y, idx, lo, hi, z, r):
    """r = z - y over the chunk; returns the loss sum 0.5 r^2 (the dense kernel's)."""
    loss = 0.0
    for t in range(hi - lo):
        r[t] = z[t] - np.float64(y[idx[lo + t]])
        loss += 0.5 * r[t] * r[t]
    return loss


@njit
def _logistic_chunk(y, idx, lo, hi, z, r, e, bits):
    """r = sigmoid(z) - y over the chunk; returns the cross-entropy sum. The exps are one
    SIMD loop (:mod:`mpisgd.kernels.vmath`), as in the dense logistic kernel."""
    n = hi - lo
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
    return loss


@njit
def _glm_block(logistic, indptr, values, y, idx, starts, remap, w, b, lo, hi, acc):
    """Add the gradients of rows idx[lo:hi] to ``acc`` (keys, then the bias); return the
    loss. Chunked so that the exps of a chunk form one vectorised loop."""
    K = w.shape[0]
    z = np.empty(CHUNK_ROWS)
    r = np.empty(CHUNK_ROWS)
    e = np.empty(CHUNK_ROWS)
    bits = np.empty(CHUNK_ROWS, np.int64)
    loss = 0.0
    for c in range(lo, hi, CHUNK_ROWS):
        end = min(c + CHUNK_ROWS, hi)
        _dots(indptr, values, idx, starts, remap, w, b, c, end, z)
        if logistic:
            loss += _logistic_chunk(y, idx, c, end, z, r, e, bits)
        else:
            loss += _linear_chunk(y, idx, c, end, z, r)
        rb = _scatter(indptr, values, idx, starts, remap, c, end, r, acc)
        acc[K] += rb
    return loss


@pjit
def glm_loss_grad(logistic, indptr, values, y, idx, starts, remap, w, b, grad_out):
    """Linear (logistic False) or logistic loss+gradient over rows ``idx``, parameters
    w (K,) per key and bias b; overwrites grad_out (K + 1,: keys then bias); returns the
    loss sum."""
    m = idx.shape[0]
    p = w.shape[0] + 1
    nb = n_blocks(m, p)
    acc = np.zeros((nb, p))
    losses = np.zeros(nb)
    for k in prange(nb):
        lo, hi = block_range(m, nb, k)
        losses[k] = _glm_block(logistic, indptr, values, y, idx, starts, remap, w, b, lo,
                               hi, acc[k])
    return reduce_blocks(acc, losses, grad_out)


@njit
def _link(logistic, z):
    """The prediction of a logit: z itself, or P(y=1) without overflow for either sign."""
    if not logistic:
        return z
    e = np.exp(-abs(z))
    return (1.0 if z >= 0.0 else e) / (1.0 + e)


@pjit
def glm_predict_keys(logistic, indptr, values, idx, starts, remap, w, b, out):
    """out[t] = prediction for row idx[t] from the keys' weights (rows are independent,
    so any split is deterministic)."""
    for t in prange(idx.shape[0]):
        q = starts[t]
        z = row_dot(values, indptr[idx[t]], remap, q, starts[t + 1] - q, w, b)
        out[t] = _link(logistic, z)


@pjit
def glm_predict_theta(logistic, indptr, indices, values, idx, theta, out):
    """out[t] = prediction for row idx[t] from a dense theta = [w (d), b]."""
    d = theta.shape[0] - 1
    w = theta[:d]
    for t in prange(idx.shape[0]):
        i = idx[t]
        p = indptr[i]
        z = row_dot(values, p, indices, p, indptr[i + 1] - p, w, theta[d])
        out[t] = _link(logistic, z)

"""Multilayer-perceptron kernels: 1-3 dense hidden layers (relu or tanh) and a task head.

Layout of the flat parameter vector, layer by layer for l = 0 .. L (L hidden layers, then
the output layer): ``W_l`` of shape (out_l, in_l) row-major, then ``b_l`` (out_l). So
in_0 = n_features, out_l = in_(l+1) = hidden[l], and the output layer has 1 unit
(regression: squared loss 0.5*(f - y)^2; binary: one logit, logistic loss) or C units
(multiclass: softmax cross-entropy). ``sizes`` = [in_0, hidden..., out_L] (int64) describes
it; the gradient has the same layout, so weights and gradients travel as one buffer.

A minibatch is cut into row blocks whose number depends on (rows, parameters) only; each
block runs forward and backward over chunks of its rows and sums its gradient into its own
float64 row; the rows are added in block order, so the result is bitwise identical for any
number of threads. Task and activation arrive as integer codes (see ``TASKS``, ``ACTS``).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from mpisgd.kernels.options import (
    MAX_ACC_BYTES,
    MAX_BLOCKS,
    block_range,
    fold,
    njit,
    pjit,
    reduce_blocks,
)
from mpisgd.kernels.softmax import _softmax
from mpisgd.models import ACTIVATIONS

# Task and activation codes: positions in these tuples.
ACTS = ACTIVATIONS
REGRESSION, BINARY, MULTICLASS = 0, 1, 2
RELU, TANH = 0, 1

# A row costs ~6 P flops here against ~4 d for the convex models, so blocks of 256 rows
# already dwarf a block's fixed cost (zeroing and folding P numbers) and a 1024-row batch
# still feeds 4 threads. The count still depends on (rows, P) only, never on threads.
MLP_BLOCK_ROWS = 256
# Rows per chunk (a multiple of 4, the row unrolling): all activations of a 64-row chunk
# of a 256-wide net take ~64 KiB each and stay in L2 between forward and backward. The
# chunk's float32 gradient is folded into the float64 block row after every chunk.
MLP_CHUNK_ROWS = 64


@njit
def _n_blocks(m, p):
    """Row blocks for ``m`` rows and ``p`` parameters: a function of (m, p) alone."""
    return max(1, min(MAX_BLOCKS, (m + MLP_BLOCK_ROWS - 1) // MLP_BLOCK_ROWS,
                      MAX_ACC_BYTES // (8 * p)))


@njit
def _layer(v, sizes, l):
    """Views (W (out, in), b (out)) of layer ``l`` in a flat vector of the layout above."""
    off = 0
    for k in range(l):
        off += sizes[k + 1] * (sizes[k] + 1)
    n_in, n_out = sizes[l], sizes[l + 1]
    end = off + n_out * n_in
    return v[off:end].reshape((n_out, n_in)), v[end : end + n_out]


@njit
def _rows(buf, off, n, w):
    """(n, w) C-contiguous view of ``buf[off:]``: every scratch matrix is a view of a flat
    buffer, so all have one numba type and can be swapped inside a loop over layers."""
    return buf[off : off + n * w].reshape((n, w))


@njit
def _hidden_off(sizes, l, ch):
    """Offset of hidden layer ``l``'s activations (0-based) in the chunk buffer ``H``."""
    off = 0
    for k in range(l):
        off += ch * sizes[k + 1]
    return off


@njit
def _wt_off(sizes, l):
    """Offset of layer ``l``'s transposed weights (l >= 1) in the buffer ``WT``."""
    off = 0
    for k in range(1, l):
        off += sizes[k] * sizes[k + 1]
    return off


@njit
def _transpose_weights(theta, sizes):
    """W_l^T (in, out) for every l >= 1, in one flat buffer: back-propagation through layer l
    is then four-row dot products along contiguous rows, like the forward pass, instead
    of axpys whose stores would bound the speed."""
    n_layers = sizes.shape[0] - 1
    WT = np.empty(_wt_off(sizes, n_layers), theta.dtype)
    for l in range(1, n_layers):
        W, _ = _layer(theta, sizes, l)
        T = _rows(WT, _wt_off(sizes, l), sizes[l], sizes[l + 1])
        for o in range(W.shape[0]):
            for i in range(W.shape[1]):
                T[i, o] = W[o, i]
    return WT


@njit
def _dense(A, W, b, Z):
    """Z = A W^T + b, four rows of A at a time (its row count is a multiple of 4).

    Each load of a W row serves four rows and the four sums vectorise along the shared
    inner index ('reassoc'); sums stay in the data's dtype, as the convex kernels' dots do.
    """
    n_out, n_in = W.shape
    for r in range(0, A.shape[0], 4):
        for o in range(n_out):
            s0 = s1 = s2 = s3 = b[o]
            for i in range(n_in):
                w = W[o, i]
                s0 += A[r, i] * w
                s1 += A[r + 1, i] * w
                s2 += A[r + 2, i] * w
                s3 += A[r + 3, i] * w
            Z[r, o] = s0
            Z[r + 1, o] = s1
            Z[r + 2, o] = s2
            Z[r + 3, o] = s3


@njit
def _activate(Z, act):
    """Apply the activation in place. relu keeps NaN (NaN < 0 is false), so a NaN in the
    data or the weights reaches the loss instead of being clipped to 0."""
    if act == RELU:
        for r in range(Z.shape[0]):
            for j in range(Z.shape[1]):
                if Z[r, j] < 0:
                    Z[r, j] = 0.0
    else:
        for r in range(Z.shape[0]):
            for j in range(Z.shape[1]):
                Z[r, j] = np.tanh(Z[r, j])


@njit
def _activation_grad(D, H, act):
    """D *= act'(z), from the activation's output H: relu' = (h > 0), tanh' = 1 - h^2."""
    if act == RELU:
        for r in range(D.shape[0]):
            for j in range(D.shape[1]):
                if H[r, j] <= 0:
                    D[r, j] = 0.0
    else:
        for r in range(D.shape[0]):
            for j in range(D.shape[1]):
                h = H[r, j]
                g = D[r, j]
                D[r, j] = g - (g * h) * h  # g * (1 - h^2) without an int 1 promoting to float64


@njit
def _outer(D, A, gW, gb):
    """gW += D^T A and gb += column sums of D, four rows at a time: one load and store of
    each gW row per four rows."""
    n_out, n_in = gW.shape
    for r in range(0, D.shape[0], 4):
        for o in range(n_out):
            d0, d1, d2, d3 = D[r, o], D[r + 1, o], D[r + 2, o], D[r + 3, o]
            for i in range(n_in):
                gW[o, i] += ((d0 * A[r, i] + d1 * A[r + 1, i])
                             + (d2 * A[r + 2, i] + d3 * A[r + 3, i]))
            gb[o] += (d0 + d1) + (d2 + d3)


@njit
def _gather(X, idx, lo, n, Xc):
    """Rows idx[lo:lo+n] of X into the chunk buffer, zero rows up to a multiple of 4; return
    the (npad, d) view. Zero rows give finite activations and get zero deltas, so they add
    exactly nothing to the gradient."""
    d = X.shape[1]
    npad = (n + 3) // 4 * 4
    A = _rows(Xc, 0, npad, d)
    for t in range(n):
        i = idx[lo + t]
        for j in range(d):
            A[t, j] = X[i, j]
    for t in range(n, npad):
        for j in range(d):
            A[t, j] = 0.0
    return A


@njit
def _forward(A0, theta, sizes, act, H, Zb, ch):
    """Hidden activations into H (layer l at ``_hidden_off``), output logits; return them
    as an (npad, out) view of Zb."""
    npad = A0.shape[0]
    n_hidden = sizes.shape[0] - 2
    A = A0
    for l in range(n_hidden):
        W, b = _layer(theta, sizes, l)
        Hl = _rows(H, _hidden_off(sizes, l, ch), npad, sizes[l + 1])
        _dense(A, W, b, Hl)
        _activate(Hl, act)
        A = Hl
    W, b = _layer(theta, sizes, n_hidden)
    Z = _rows(Zb, 0, npad, sizes[n_hidden + 1])
    _dense(A, W, b, Z)
    return Z


@njit
def _head(Z, yf, yi, idx, lo, n, task, zf):
    """Overwrite the logits of the n real rows with dloss/dlogits and zero the padding rows'
    deltas; return the loss sum (float64, as the convex kernels compute it). Targets come
    from ``yf`` (regression) or the labels ``yi`` (binary, multiclass)."""
    loss = 0.0
    for t in range(n):
        i = idx[lo + t]
        if task == REGRESSION:
            r = np.float64(Z[t, 0]) - np.float64(yf[i])
            loss += 0.5 * r * r
            Z[t, 0] = r
        elif task == BINARY:
            z = np.float64(Z[t, 0])
            yt = np.float64(yi[i])
            # log(1 + exp(-|z|)) + max(z, 0) - y z: never overflows, exact for large |z|.
            e = np.exp(-abs(z))
            loss += np.log1p(e) + max(z, 0.0) - yt * z
            Z[t, 0] = ((1.0 if z >= 0.0 else e) / (1.0 + e)) - yt
        else:
            k = yi[i]
            for c in range(Z.shape[1]):
                zf[c] = Z[t, c]
            zy = zf[k]
            loss += _softmax(zf, zf) - zy
            zf[k] -= 1.0
            for c in range(Z.shape[1]):
                Z[t, c] = zf[c]
    for t in range(n, Z.shape[0]):
        for c in range(Z.shape[1]):
            Z[t, c] = 0.0
    return loss


@njit
def _chunk(X, yf, yi, idx, lo, hi, theta, part, sizes, task, act, S):
    """Add the gradients of rows idx[lo:hi] to ``part`` (X's dtype); return their loss sum."""
    Xc, H, Zb, D0, D1, zb, zf, WT = S
    ch = MLP_CHUNK_ROWS
    n = hi - lo
    A0 = _gather(X, idx, lo, n, Xc)
    npad = A0.shape[0]
    D = _forward(A0, theta, sizes, act, H, Zb, ch)
    loss = _head(D, yf, yi, idx, lo, n, task, zf)
    flip = False
    for l in range(sizes.shape[0] - 2, -1, -1):
        A = A0 if l == 0 else _rows(H, _hidden_off(sizes, l - 1, ch), npad, sizes[l])
        gW, gb = _layer(part, sizes, l)
        _outer(D, A, gW, gb)
        if l > 0:  # the input layer needs no delta
            Dn = _rows(D1 if flip else D0, 0, npad, sizes[l])
            _dense(D, _rows(WT, _wt_off(sizes, l), sizes[l], sizes[l + 1]), zb, Dn)
            _activation_grad(Dn, A, act)
            D = Dn
            flip = not flip
    return loss


@njit
def _scratch(d, sizes, dtype_of):
    """Chunk buffers (X rows, hidden activations, logits, two delta buffers, a zero bias,
    float64 logits); ``dtype_of`` is any array of the data's dtype."""
    ch = MLP_CHUNK_ROWS
    widest = sizes[1:].max()
    n_out = sizes[sizes.shape[0] - 1]
    dt = dtype_of.dtype
    return (np.empty(ch * d, dt), np.empty(_hidden_off(sizes, sizes.shape[0] - 2, ch), dt),
            np.empty(ch * n_out, dt), np.empty(ch * widest, dt), np.empty(ch * widest, dt),
            np.zeros(widest, dt), np.empty(n_out))


@njit
def _block(X, yf, yi, idx, lo, hi, theta, acc, sizes, task, act):
    """Add the gradients of rows idx[lo:hi] to ``acc`` (float64) chunk by chunk; return the loss."""
    part = np.zeros(acc.shape[0], X.dtype)
    Xc, H, Zb, D0, D1, zb, zf = _scratch(X.shape[1], sizes, X)
    S = (Xc, H, Zb, D0, D1, zb, zf, _transpose_weights(theta, sizes))
    loss = 0.0
    for c in range(lo, hi, MLP_CHUNK_ROWS):
        loss += _chunk(X, yf, yi, idx, c, min(c + MLP_CHUNK_ROWS, hi), theta, part, sizes,
                       task, act, S)
        fold(part, acc)
    return loss


@pjit
def _loss_grad(X, yf, yi, idx, theta, grad_out, sizes, task, act):
    """Overwrite ``grad_out`` with the gradient sum over rows ``idx``; return the loss sum.

    ``yf`` (X's dtype) holds regression targets, ``yi`` (int64) labels; the task leaves the
    other one empty. Two target arguments of fixed types mean one compilation per X dtype
    instead of two (a parallel kernel of this depth takes ~10 s to compile)."""
    m = idx.shape[0]
    nb = _n_blocks(m, theta.shape[0])
    acc = np.zeros((nb, theta.shape[0]))
    losses = np.zeros(nb)
    for k in prange(nb):
        lo, hi = block_range(m, nb, k)
        losses[k] = _block(X, yf, yi, idx, lo, hi, theta, acc[k], sizes, task, act)
    return reduce_blocks(acc, losses, grad_out)


@njit
def _predict_rows(X, lo, hi, theta, sizes, task, act, out):
    """out[i] = prediction of row i for i in [lo, hi): f, P(y=1) or the C probabilities."""
    Xc, H, Zb, _, _, _, zf = _scratch(X.shape[1], sizes, X)
    rows = np.arange(lo, hi)
    ch = MLP_CHUNK_ROWS
    for c in range(0, hi - lo, ch):
        n = min(ch, hi - lo - c)
        Z = _forward(_gather(X, rows, c, n, Xc), theta, sizes, act, H, Zb, ch)
        for t in range(n):
            if task == REGRESSION:
                out[lo + c + t, 0] = Z[t, 0]
            elif task == BINARY:
                z = np.float64(Z[t, 0])
                e = np.exp(-abs(z))  # the overflow-free sigmoid of logistic._sigmoid
                out[lo + c + t, 0] = (1.0 if z >= 0.0 else e) / (1.0 + e)
            else:
                for k in range(Z.shape[1]):
                    zf[k] = Z[t, k]
                _softmax(zf, zf)
                for k in range(Z.shape[1]):
                    out[lo + c + t, k] = zf[k]


@pjit
def _predict(X, theta, sizes, task, act, out):
    """out (n, out_L) = predictions; rows are independent, blocks only amortise the scratch."""
    n = X.shape[0]
    nb = _n_blocks(n, 1)
    for k in prange(nb):
        lo, hi = block_range(n, nb, k)
        _predict_rows(X, lo, hi, theta, sizes, task, act, out)


def init_weights(sizes, act: int, dtype, rng: np.random.Generator) -> np.ndarray:
    """Uniform initial weights drawn layer by layer from ``rng`` (in float64, then cast, so
    float32 and float64 runs start from the same values rounded); biases zero.

    Hidden layers: He, U(+-sqrt(6 / in)), for relu, whose zeroed half halves the variance;
    Glorot, U(+-sqrt(6 / (in + out))), for tanh. The output layer feeds no activation, so
    it always takes Glorot.
    """
    sizes = [int(s) for s in sizes]
    theta = np.zeros(sum(o * (i + 1) for i, o in zip(sizes[:-1], sizes[1:])), dtype=dtype)
    off = 0
    n_layers = len(sizes) - 1
    for l in range(n_layers):
        n_in, n_out = sizes[l], sizes[l + 1]
        he = act == RELU and l < n_layers - 1
        limit = np.sqrt(6.0 / (n_in if he else n_in + n_out))
        theta[off : off + n_out * n_in] = rng.uniform(-limit, limit, size=n_out * n_in)
        off += n_out * (n_in + 1)
    return theta

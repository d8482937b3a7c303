"""Multilayer-perceptron kernels: 1-3 dense hidden layers (relu or tanh) and a task head.

Layout of the flat parameter vector, layer by layer for l = 0 .. L (L hidden layers, then
the output layer): ``W_l`` of shape (out_l, in_l) row-major, then ``b_l`` (out_l). So
in_0 = n_features, out_l = in_(l+1) = hidden[l], and the output layer has 1 unit
(regression: squared loss 0.5*(f - y)^2; binary: one logit, logistic loss) or C units
(multiclass: softmax cross-entropy). ``sizes`` = [in_0, hidden..., out_L] (int64) describes
it; the gradient has the same layout, so weights and gradients travel as one buffer.

The gradient pass (:class:`LossGrad`) runs its matrix products through the BLAS that
NumPy links (``np.matmul`` into preallocated buffers) and the rest (activations, their
derivatives, the task head) through small numba kernels: on a 1024-row batch of a
100-256-256-10 net at one thread, 5.0 ms against 12.3 ms for the hand-written numba loops
it replaced (which reached 36-54% of NumPy's matrix-product GFLOP/s). Its result is a
function of the inputs and the BLAS alone: no numba parallelism, and OpenBLAS's GEMM
splits the output among its threads, never a dot product, so the thread count does not
change a bit (``tests/unit/test_mlp.py`` runs it at 1 and 2 BLAS threads). Prediction
stays in numba: rows are independent, cut into blocks for numba's threads. Task and
activation arrive as integer codes (see ``TASKS``, ``ACTS``).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from mpisgd.kernels.options import MAX_BLOCKS, block_range, njit, pjit
from mpisgd.kernels.softmax import _softmax
from mpisgd.models import ACTIVATIONS

# Task and activation codes: positions in these tuples.
ACTS = ACTIVATIONS
REGRESSION, BINARY, MULTICLASS = 0, 1, 2
RELU, TANH = 0, 1

# Prediction: rows per block (a block's scratch is allocated once) and per chunk (a
# multiple of 4, the row unrolling of _dense; a 64-row chunk's activations of a 256-wide
# net take ~64 KiB each and stay in L2).
MLP_BLOCK_ROWS = 256
MLP_CHUNK_ROWS = 64


@njit
def _n_blocks(m):
    """Row blocks of a prediction over ``m`` rows."""
    return max(1, min(MAX_BLOCKS, (m + MLP_BLOCK_ROWS - 1) // MLP_BLOCK_ROWS))


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
def _scratch(d, sizes, dtype_of):
    """Chunk buffers (X rows, hidden activations, logits, float64 logits); ``dtype_of``
    is any array of the data's dtype."""
    ch = MLP_CHUNK_ROWS
    n_out = sizes[sizes.shape[0] - 1]
    dt = dtype_of.dtype
    return (np.empty(ch * d, dt), np.empty(_hidden_off(sizes, sizes.shape[0] - 2, ch), dt),
            np.empty(ch * n_out, dt), np.empty(n_out))


@njit
def _predict_rows(X, lo, hi, theta, sizes, task, act, out):
    """out[i] = prediction of row i for i in [lo, hi): f, P(y=1) or the C probabilities."""
    Xc, H, Zb, zf = _scratch(X.shape[1], sizes, X)
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
    nb = _n_blocks(n)
    for k in prange(nb):
        lo, hi = block_range(n, nb, k)
        _predict_rows(X, lo, hi, theta, sizes, task, act, out)


def layer_views(v: np.ndarray, sizes) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(W_l (out, in), b_l (out)) for each layer]: views of a flat vector in the layout
    above (parameters or gradient)."""
    views, off = [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        end = off + n_out * n_in
        views.append((v[off:end].reshape(n_out, n_in), v[end:end + n_out]))
        off = end + n_out
    return views


# Rows per block of the weight gradients' products: OpenBLAS may split a product's
# inner dimension among its threads when that dimension is long and the output small
# (measured: D^T A over 3,000 rows into 96 x 64 changes bits between 1 and 2 threads),
# so the sum over rows is cut into blocks of this many rows, each its own product, added
# in block order. The count depends on the batch's rows alone.
MLP_GRAD_BLOCK = 256
# Rows per pass (a multiple of MLP_GRAD_BLOCK): a longer batch (the training objective
# over every row) runs in pieces of this many rows, so the kept buffers stay bounded
# (about 35 MB for a 100-256-256-10 net in float32) whatever the batch.
MLP_MAX_ROWS = 32 * MLP_GRAD_BLOCK


class LossGrad:
    """The loss and gradient sum of an MLP over rows ``idx`` of X, for one (sizes, task,
    activation): ``self(X, yf, yi, idx, theta, grad_out)`` overwrites ``grad_out``.

    ``yf`` (X's dtype) holds regression targets, ``yi`` (int64) labels; the task leaves
    the other one empty. Inputs are checked by the caller (``kernels.spec_loss_grad``).
    Forward: H_l = act(A_(l-1) W_l^T + b_l); backward from D = dloss/dlogits: gW_l = D^T
    A_(l-1) (block by block, see ``MLP_GRAD_BLOCK``), gb_l = column sums of D, D <- (D
    W_l) * act'(H_(l-1)). The batch is padded with zero rows to whole blocks: their
    deltas are zero (``_head`` zeroes the padding rows), so they add exactly nothing. The
    buffers are kept from call to call (grown to the largest piece seen, at most
    ``MLP_MAX_ROWS`` rows): a step allocates nothing. Not for concurrent calls.
    """

    def __init__(self, sizes, task: int, act: int):
        self.sizes = [int(s) for s in sizes]
        self.task, self.act, self.rows, self.dtype = task, act, 0, None
        self.zf = np.empty(self.sizes[-1])   # one row's logits in float64, for _head

    def _buffers(self, rows: int, dtype) -> None:
        if rows <= self.rows and dtype == self.dtype:
            return
        s = self.sizes
        self.A0 = np.zeros((rows, s[0]), dtype)
        self.H = [np.empty((rows, w), dtype) for w in s[1:-1]]
        self.Z = np.empty((rows, s[-1]), dtype)
        self.D = [np.empty(rows * max(s[1:-1]), dtype) for _ in range(2)]
        blocks = rows // MLP_GRAD_BLOCK
        self.G = np.empty(blocks * max(o * i for i, o in zip(s[:-1], s[1:])), dtype)
        self.rows, self.dtype = rows, dtype

    def __call__(self, X, yf, yi, idx, theta, grad_out) -> float:
        m = idx.shape[0]
        if m == 0:
            grad_out[:] = 0
            return 0.0
        loss = self._piece(X, yf, yi, idx[:MLP_MAX_ROWS], theta, grad_out)
        if m > MLP_MAX_ROWS:   # the later pieces' gradients added in piece order
            part = np.empty_like(grad_out)
            for lo in range(MLP_MAX_ROWS, m, MLP_MAX_ROWS):
                loss += self._piece(X, yf, yi, idx[lo:lo + MLP_MAX_ROWS], theta, part)
                grad_out += part
        return loss

    def _piece(self, X, yf, yi, idx, theta, grad_out) -> float:
        """:meth:`__call__` for at most ``MLP_MAX_ROWS`` rows."""
        m, sizes = idx.shape[0], self.sizes
        B = MLP_GRAD_BLOCK
        rows = -(-m // B) * B
        self._buffers(rows, X.dtype)
        weights, grads = layer_views(theta, sizes), layer_views(grad_out, sizes)
        A0 = self.A0[:rows]
        np.take(X, idx, axis=0, out=A0[:m])
        A0[m:] = 0
        acts = [A0]
        for l, (W, b) in enumerate(weights[:-1]):
            H = np.matmul(acts[-1], W.T, out=self.H[l][:rows])
            H += b
            _activate(H, self.act)
            acts.append(H)
        W, b = weights[-1]
        D = np.matmul(acts[-1], W.T, out=self.Z[:rows])
        D += b
        loss = _head(D, yf, yi, idx, 0, m, self.task, self.zf)
        for l in range(len(weights) - 1, -1, -1):
            self._weight_grad(D, acts[l], *grads[l])
            if l:   # the input layer needs no delta
                Dn = self.D[l % 2][:rows * sizes[l]].reshape(rows, sizes[l])
                np.matmul(D, weights[l][0], out=Dn)
                _activation_grad(Dn, acts[l], self.act)
                D = Dn
        return float(loss)

    def _weight_grad(self, D, A, gW, gb) -> None:
        """gW = D^T A as a sum of per-block products in block order; gb = column sums of D."""
        B = MLP_GRAD_BLOCK
        nb, (o, i) = D.shape[0] // B, gW.shape
        parts = self.G[:nb * o * i].reshape(nb, o, i)
        np.matmul(D.reshape(nb, B, o).transpose(0, 2, 1), A.reshape(nb, B, i), out=parts)
        np.sum(parts, axis=0, out=gW)
        np.sum(D, axis=0, out=gb)


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

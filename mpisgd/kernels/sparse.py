"""Sparse models: loss+gradient and predict over CSR rows, behind validating wrappers.

For linear, logistic and softmax models over millions to 2^32 (hashed) features with a
few dozen non-zeros per row. Rows come as a :class:`CSR` block, checked once; a minibatch
is an array ``idx`` of its rows, as for the dense kernels. Parameters are held one of two
ways:

- only the minibatch's keys, as a parameter-server worker pulls them: ``keys, remap =
  unique_keys(X.indptr, X.indices, idx)``, then :func:`loss_grad` with ``w_keys`` (K,)
  for linear and logistic or (K, C) for softmax (key-major: row k is the C class weights
  of keys[k]; see :mod:`mpisgd.kernels.csr_softmax` for why) and ``bias`` (1,) or (C,);
- a dense theta in the dense models' layout (:mod:`mpisgd.models`: ``[w (d), b]`` or
  ``[W (C, d), b (C)]``): :func:`loss_grad_theta` returns the gradient of the touched keys
  only, :func:`loss_grad_dense` fills a whole dense gradient.

Every gradient is a sum over rows, with no regularisation, and is bitwise identical for
any number of numba threads (the dense kernels' row blocks). The kernels themselves are in
:mod:`mpisgd.kernels.csr` and :mod:`mpisgd.kernels.csr_softmax`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mpisgd.errors import DataError
from mpisgd.kernels import csr, csr_softmax
from mpisgd.kernels.csr import KEY_LIMIT, batch_starts, count_not_increasing, count_out_of
from mpisgd.models import check_name

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# scipy.sparse gives int32 indices below 2^31 columns; hashed ids up to 2^32 fit uint32.
_INDEX = (np.dtype(np.int32), np.dtype(np.uint32), np.dtype(np.int64))
_INT64 = (np.dtype(np.int64),)


class Keys(NamedTuple):
    """A minibatch's sorted unique feature ids, and for each of its non-zeros (row after
    row in ``idx`` order) the position of its feature in ``keys``."""

    keys: np.ndarray    # int64 (K,), strictly increasing
    remap: np.ndarray   # int64 (nnz of the minibatch,), values in [0, K)


class SparseGrad(NamedTuple):
    """A loss sum and the gradient of the parameters a minibatch touches."""

    loss: float
    keys: np.ndarray        # int64 (K,)
    grad_keys: np.ndarray   # (K,), softmax (K, C) key-major; the rows' dtype
    grad_bias: np.ndarray   # (1,), softmax (C,)


def _array(fn, name, a, ndim, dtypes) -> np.ndarray:
    """``a`` must be a C-contiguous ``ndim``-D ndarray of one of ``dtypes``."""
    if (isinstance(a, np.ndarray) and a.dtype in dtypes and a.ndim == ndim
            and a.flags.c_contiguous):
        return a
    what = f"The {name!r} argument of {fn}"
    kinds = " or ".join(str(d) for d in dtypes)
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a numpy array of {kinds}. Got {type(a).__name__} instead.")
    if a.dtype not in dtypes:
        raise TypeError(f"{what} must have dtype {kinds}. Got {a.dtype} instead.")
    if a.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D. Got shape {a.shape} instead.")
    raise ValueError(f"{what} must be C-contiguous. Got a strided view; "
                     f"pass np.ascontiguousarray({name}).")


def _first_out_of(a, limit) -> int:
    """Position of the first entry of ``a`` outside [0, limit), or -1 (one compiled pass
    when there is none)."""
    if not count_out_of(a, limit):
        return -1
    return int(np.flatnonzero((a < 0) | (a >= limit))[0])


def _first_bad_key(keys, limit) -> int:
    """Position of the first key not strictly above the one before it, else of a key
    outside [0, limit) (sorted keys: only the ends can be), or -1."""
    if count_not_increasing(keys):
        return int(np.flatnonzero(keys[1:] <= keys[:-1])[0]) + 1
    if keys.size and keys[0] < 0:
        return 0
    return keys.size - 1 if keys.size and keys[-1] >= limit else -1


class CSR:
    """Rows in compressed sparse row form, checked once when made (one compiled pass).

    indptr: int64 (n_rows + 1,), from 0, non-decreasing, ending at nnz. indices: int32,
    uint32 or int64 (nnz,), every one in [0, n_features). values: float32 or float64
    (nnz,), the dtype of every parameter and gradient. A row may list its features in any
    order; a repeated feature adds up, as in scipy.sparse. n_features: 1 to 2^32.
    The arrays are kept, not copied: indptr and indices must not change afterwards
    (predict indexes theta with them unchecked; read-only views would double the
    compiled kernels, numba typing them apart).
    """

    def __init__(self, indptr, indices, values, n_features: int):
        _array("CSR", "indptr", indptr, 1, _INT64)
        _array("CSR", "indices", indices, 1, _INDEX)
        _array("CSR", "values", values, 1, _FLOATS)
        if (isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer))
                or not 1 <= n_features <= KEY_LIMIT):
            raise ValueError(f"The 'n_features' argument of CSR must be an int in [1, 2^32]. "
                             f"Got {n_features!r} instead.")
        nnz = indices.shape[0]
        if values.shape[0] != nnz or indptr.size == 0 or indptr[0] != 0 or indptr[-1] != nnz:
            raise DataError(
                f"A CSR block needs indptr[0] = 0 and indptr[-1] = len(indices) = "
                f"len(values). Got indptr[0] = {indptr[0] if indptr.size else None}, "
                f"indptr[-1] = {indptr[-1] if indptr.size else None}, {nnz} indices and "
                f"{values.shape[0]} values.")
        rows = np.arange(indptr.size - 1, dtype=np.int64)
        t = batch_starts(indptr, nnz, rows, np.empty(rows.size + 1, np.int64))
        if t >= 0:
            raise DataError(f"A CSR block's indptr must be non-decreasing from 0 to "
                            f"{nnz}. Got indptr[{t}:{t + 2}] = {indptr[t:t + 2]}.")
        q = _first_out_of(indices, int(n_features))
        if q >= 0:
            row = int(np.searchsorted(indptr, q, side="right")) - 1
            raise DataError(f"Feature ids must be in [0, n_features = {n_features}). Got "
                            f"{indices[q]} in row {row} (non-zero {q}); check the data's "
                            f"n_features.")
        self.indptr, self.indices, self.values = indptr, indices, values
        self.n_features = int(n_features)

    @classmethod
    def from_scipy(cls, matrix) -> CSR:
        """A CSR of a scipy.sparse csr_matrix or csr_array (shared where the dtypes allow)."""
        return cls(np.ascontiguousarray(matrix.indptr, dtype=np.int64),
                   np.ascontiguousarray(matrix.indices), np.ascontiguousarray(matrix.data),
                   int(matrix.shape[1]))

    @property
    def n_rows(self) -> int:
        return self.indptr.shape[0] - 1

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype


def _csr(fn, X) -> CSR:
    if not isinstance(X, CSR):
        raise TypeError(f"The 'X' argument of {fn} must be a mpisgd.kernels.sparse.CSR. "
                        f"Got {type(X).__name__} instead.")
    return X


def _rows(fn, idx, n_rows) -> np.ndarray:
    """``idx`` as contiguous int64 rows in [0, n_rows)."""
    idx = np.asarray(idx)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise TypeError(f"The 'idx' argument of {fn} must be a 1-D array of integers. "
                        f"Got {idx.dtype} of shape {idx.shape} instead.")
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    t = _first_out_of(idx, n_rows)
    if t >= 0:
        raise ValueError(f"The 'idx' argument of {fn} must index rows in [0, {n_rows}). "
                         f"Got idx[{t}] = {idx[t]}.")
    return idx


def _starts(fn, indptr, n_indices, idx) -> np.ndarray:
    """Where each minibatch row's non-zeros start in ``remap`` (int64, m + 1)."""
    starts = np.empty(idx.size + 1, np.int64)
    t = batch_starts(indptr, n_indices, idx, starts)
    if t >= 0:
        i = idx[t]
        raise ValueError(f"The 'indptr' argument of {fn} must give row {i} a range in "
                         f"[0, {n_indices}]. Got indptr[{i}:{i + 2}] = {indptr[i:i + 2]}.")
    return starts


def _unique(fn, indptr, indices, idx, starts) -> Keys:
    nnz = int(starts[-1])
    if nnz > KEY_LIMIT:
        raise ValueError(f"A minibatch of {fn} can hold at most 2^32 non-zeros. Got {nnz}; "
                         f"use fewer rows.")
    packed = np.empty(nnz, np.uint64)
    q = csr.pack_keys(indptr, indices, idx, starts, packed)
    if q >= 0:
        t = int(np.searchsorted(starts, q, side="right")) - 1
        raise DataError(f"Feature ids of sparse models must be in [0, 2^32). Got "
                        f"{indices[indptr[idx[t]] + q - starts[t]]} in row {idx[t]}.")
    packed.sort()   # NumPy's SIMD sort: 0.35 ms for 40,960 keys where numba's takes 4.7 ms
    keys = np.empty(nnz, np.int64)
    remap = np.empty(nnz, np.int64)
    n = csr.unpack_keys(packed, keys, remap)
    return Keys(keys[:n].copy(), remap)


def unique_keys(indptr: np.ndarray, indices: np.ndarray, idx) -> Keys:
    """The sorted unique feature ids of rows ``idx`` and, for each of their non-zeros (row
    after row in ``idx`` order), the position of its feature in them: ``(keys, remap)``.

    indptr: int64; indices: int32, uint32 or int64 in [0, 2^32); idx: integer rows.
    """
    _array("unique_keys", "indptr", indptr, 1, _INT64)
    _array("unique_keys", "indices", indices, 1, _INDEX)
    if indptr.size == 0:
        raise ValueError("The 'indptr' argument of unique_keys must have n_rows + 1 >= 1 "
                         "entries. Got an empty array.")
    idx = _rows("unique_keys", idx, indptr.size - 1)
    starts = _starts("unique_keys", indptr, indices.size, idx)
    return _unique("unique_keys", indptr, indices, idx, starts)


def _labels(fn, model, X, y, idx, n_labels) -> np.ndarray:
    """y: X's dtype (linear) or int64 (n_rows,); the rows ``idx`` hold labels in
    [0, n_labels)."""
    dtype = X.dtype if model == "linear" else np.dtype(np.int64)
    if not isinstance(y, np.ndarray) or y.dtype != dtype:
        got = y.dtype if isinstance(y, np.ndarray) else type(y).__name__
        raise TypeError(f"The 'y' argument of {fn} must be a {dtype} array for model "
                        f"{model!r}. Got {got} instead.")
    if y.shape != (X.n_rows,):
        raise ValueError(f"The 'y' argument of {fn} must have shape ({X.n_rows},), one entry "
                         f"per row of X. Got shape {y.shape} instead.")
    y = np.ascontiguousarray(y)
    if n_labels:
        labels = y[idx]
        t = _first_out_of(labels, n_labels)
        if t >= 0:
            raise DataError(f"Labels of model {model!r} must be integers in [0, {n_labels}). "
                            f"Got y[{idx[t]}] = {labels[t]}; check the dataset's labels and "
                            f"n_classes.")
    return y


def _params(fn, model, X, w_keys, bias) -> int:
    """Check the keys' weights and the bias; return the labels' range (0: regression)."""
    _array(fn, "w_keys", w_keys, 2 if model == "softmax" else 1, (X.dtype,))
    _array(fn, "bias", bias, 1, (X.dtype,))
    C = w_keys.shape[1] if model == "softmax" else 1
    if model == "softmax" and C < 2:
        raise ValueError(f"The 'w_keys' argument of {fn} must be (n_keys, n_classes) with "
                         f"n_classes >= 2 for model 'softmax'. Got shape {w_keys.shape}.")
    if bias.shape != (C,):
        raise ValueError(f"The 'bias' argument of {fn} must have shape ({C},) for model "
                         f"{model!r}. Got shape {bias.shape} instead.")
    return {"linear": 0, "logistic": 2}.get(model, C)


def _check_keys(fn, X, keys, remap, n_keys, n_nonzeros) -> None:
    """keys: sorted unique ids in [0, n_features), one per weight row; remap: one position
    in keys per non-zero of the minibatch."""
    _array(fn, "keys", keys, 1, _INT64)
    _array(fn, "remap", remap, 1, _INT64)
    if keys.size != n_keys:
        raise ValueError(f"The 'keys' argument of {fn} must have one entry per row of "
                         f"w_keys ({n_keys}). Got {keys.size} keys.")
    k = _first_bad_key(keys, X.n_features)
    if k >= 0:
        raise ValueError(f"The 'keys' argument of {fn} must be strictly increasing feature ids "
                         f"in [0, {X.n_features}). Got keys[{k}] = {keys[k]}"
                         + (f" after {keys[k - 1]}." if k else "."))
    if remap.size != n_nonzeros:
        raise ValueError(f"The 'remap' argument of {fn} must have one entry per non-zero of "
                         f"rows idx ({n_nonzeros}). Got {remap.size}; use unique_keys.")
    q = _first_out_of(remap, keys.size)
    if q >= 0:
        raise ValueError(f"The 'remap' argument of {fn} must hold positions in keys, in "
                         f"[0, {keys.size}). Got remap[{q}] = {remap[q]}.")


def _run(model, X, y, idx, starts, keys, remap, w_keys, bias) -> SparseGrad:
    """The kernel on checked arrays; the gradient of keys and bias share one buffer."""
    K = keys.size
    C = bias.size
    grad = np.empty((K + 1) * C, X.dtype)
    if model == "softmax":
        loss = csr_softmax.loss_grad(X.indptr, X.values, y, idx, starts, remap, w_keys, bias,
                                     grad)
        return SparseGrad(float(loss), keys, grad[: K * C].reshape(K, C), grad[K * C :])
    loss = csr.glm_loss_grad(model == "logistic", X.indptr, X.values, y, idx, starts, remap,
                             w_keys, bias[0], grad)
    return SparseGrad(float(loss), keys, grad[:K], grad[K:])


def loss_grad(model: str, X: CSR, y: np.ndarray, idx, keys: np.ndarray, remap: np.ndarray,
              w_keys: np.ndarray, bias: np.ndarray) -> SparseGrad:
    """Loss summed over rows ``idx`` of X and its gradient for ``keys`` and the bias.

    (keys, remap): :func:`unique_keys` of these rows. w_keys: the keys' weights in their
    order, (K,) or, softmax, (K, C); bias (1,) or (C,); X's dtype. y: X's dtype (linear)
    or int64 labels (logistic 0/1, softmax 0..C-1). The gradient comes in the same shapes
    and dtype; nothing of size n_features is allocated.
    """
    fn = "sparse.loss_grad"
    check_name(model)
    _csr(fn, X)
    idx = _rows(fn, idx, X.n_rows)
    y = _labels(fn, model, X, y, idx, _params(fn, model, X, w_keys, bias))
    starts = _starts(fn, X.indptr, X.indices.size, idx)
    _check_keys(fn, X, keys, remap, w_keys.shape[0], int(starts[-1]))
    return _run(model, X, y, idx, starts, keys, remap, w_keys, bias)


def _n_classes(fn, model, X, theta) -> int:
    """theta's classes for X: 1 (linear, logistic) or C >= 2 (softmax)."""
    _array(fn, "theta", theta, 1, (X.dtype,))
    d = X.n_features
    C, rest = divmod(theta.size, d + 1)
    if model != "softmax" and theta.size != d + 1:
        raise ValueError(f"The 'theta' argument of {fn} must have size n_features + 1 = {d + 1} "
                         f"for model {model!r}. Got size {theta.size} instead.")
    if model == "softmax" and (rest or C < 2):
        raise ValueError(f"The 'theta' argument of {fn} must have size n_classes * "
                         f"(n_features + 1) with n_classes >= 2 and n_features = {d}. Got "
                         f"size {theta.size} instead.")
    return C


def loss_grad_theta(model: str, X: CSR, y: np.ndarray, idx, theta: np.ndarray,
                    known: Keys | None = None) -> SparseGrad:
    """:func:`loss_grad` with the parameters in a dense theta (the dense models' layout):
    the keys of rows ``idx`` are found (or taken from ``known``, :func:`unique_keys` of
    these rows computed earlier), their weights gathered, and only their gradient
    returned (softmax: key-major (K, C), the transpose of theta's (C, d) columns)."""
    fn = "sparse.loss_grad_theta"
    check_name(model)
    _csr(fn, X)
    C = _n_classes(fn, model, X, theta)
    idx = _rows(fn, idx, X.n_rows)
    y = _labels(fn, model, X, y, idx, {"linear": 0, "logistic": 2}.get(model, C))
    starts = _starts(fn, X.indptr, X.indices.size, idx)
    if known is None:
        keys, remap = _unique(fn, X.indptr, X.indices, idx, starts)
    else:
        keys, remap = known
        _check_keys(fn, X, keys, remap, keys.size, int(starts[-1]))
    d = X.n_features
    if model == "softmax":
        w_keys = np.ascontiguousarray(theta[: C * d].reshape(C, d)[:, keys].T)
    else:
        w_keys = theta[keys]
    return _run(model, X, y, idx, starts, keys, remap, w_keys, theta[C * d :])


def loss_grad_dense(model: str, X: CSR, y: np.ndarray, idx, theta: np.ndarray,
                    grad_out: np.ndarray) -> float:
    """:func:`loss_grad_theta`, the gradient written into the whole of ``grad_out`` (theta's
    shape and layout, zero for every feature rows ``idx`` do not touch); returns the loss."""
    fn = "sparse.loss_grad_dense"
    _array(fn, "theta", theta, 1, _FLOATS)
    _array(fn, "grad_out", grad_out, 1, (theta.dtype,))
    if grad_out.shape != theta.shape or not grad_out.flags.writeable:
        raise ValueError(f"The 'grad_out' argument of {fn} must be a writeable array of "
                         f"theta's shape {theta.shape}. Got shape {grad_out.shape}, "
                         f"writeable={grad_out.flags.writeable}.")
    g = loss_grad_theta(model, X, y, idx, theta)
    d = X.n_features
    C = g.grad_bias.size
    grad_out[:] = 0
    if model == "softmax":
        grad_out[: C * d].reshape(C, d)[:, g.keys] = g.grad_keys.T
    else:
        grad_out[g.keys] = g.grad_keys
    grad_out[C * d :] = g.grad_bias
    return g.loss


def _out(model, X, m, C) -> np.ndarray:
    return np.empty((m, C) if model == "softmax" else m, X.dtype)


def predict(model: str, X: CSR, theta: np.ndarray, idx=None) -> np.ndarray:
    """Predictions for rows ``idx`` (default: every row) from a dense theta, in X's dtype:
    linear x.w + b (m,); logistic P(y=1) (m,); softmax P (m, C)."""
    fn = "sparse.predict"
    check_name(model)
    _csr(fn, X)
    C = _n_classes(fn, model, X, theta)
    idx = np.arange(X.n_rows, dtype=np.int64) if idx is None else _rows(fn, idx, X.n_rows)
    out = _out(model, X, idx.size, C)
    if model == "softmax":
        csr_softmax.predict_theta(X.indptr, X.indices, X.values, idx, theta, out)
    else:
        csr.glm_predict_theta(model == "logistic", X.indptr, X.indices, X.values, idx, theta,
                              out)
    return out


def predict_keys(model: str, X: CSR, idx, keys: np.ndarray, remap: np.ndarray,
                 w_keys: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """:func:`predict` for rows ``idx`` from their keys' weights (the arguments of
    :func:`loss_grad`)."""
    fn = "sparse.predict_keys"
    check_name(model)
    _csr(fn, X)
    idx = _rows(fn, idx, X.n_rows)
    _params(fn, model, X, w_keys, bias)
    starts = _starts(fn, X.indptr, X.indices.size, idx)
    _check_keys(fn, X, keys, remap, w_keys.shape[0], int(starts[-1]))
    out = _out(model, X, idx.size, bias.size)
    if model == "softmax":
        csr_softmax.predict_keys(X.indptr, X.values, idx, starts, remap, w_keys, bias, out)
    else:
        csr.glm_predict_keys(model == "logistic", X.indptr, X.values, idx, starts, remap,
                             w_keys, bias[0], out)
    return out


__all__ = ["CSR", "Keys", "SparseGrad", "unique_keys", "loss_grad", "loss_grad_theta",
           "loss_grad_dense", "predict", "predict_keys"]

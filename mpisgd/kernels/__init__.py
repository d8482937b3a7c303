"""Loss+gradient and predict kernels of the convex models, behind one validating API.

Every array is checked here (dtype, shape, contiguity, row and label range), so the private
numba kernels run unchecked and can never read outside an array. Parameters are one flat
vector per model: linear and logistic ``[w (d), b]``; softmax ``[W (C, d) row-major, b (C)]``.
Kernels return sums over rows, not means, and apply no regularisation: the caller divides
and adds the L2 term (see :func:`l2_mask`) once, after the cross-rank reduction.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError
from . import linear, logistic, softmax
from .options import njit

MODELS = ("linear", "logistic", "softmax")
TASK_OF = {"linear": "regression", "logistic": "binary", "softmax": "multiclass"}

_LOSS_GRAD = {"linear": linear._loss_grad, "logistic": logistic._loss_grad,
              "softmax": softmax._loss_grad}
_PREDICT = {"linear": linear._predict, "logistic": logistic._predict_proba,
            "softmax": softmax._predict_proba}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_model(model) -> None:
    if not (isinstance(model, str) and model in MODELS):
        raise ConfigError(f"The 'model' parameter must be one of {MODELS}. Got {model!r} instead.")


def _check_sizes(model, n_features, n_classes) -> None:
    """Validate (model, n_features, n_classes): n_classes is 0, 2 and >= 2 for the three models."""
    _check_model(model)
    if not _is_int(n_features) or n_features < 1:
        raise ConfigError(
            f"The 'n_features' parameter must be an int >= 1. Got {n_features!r} instead."
        )
    expected = {"linear": "0 (regression)", "logistic": "2", "softmax": "an int >= 2"}[model]
    if model == "softmax":
        ok = _is_int(n_classes) and n_classes >= 2
    else:
        ok = _is_int(n_classes) and n_classes == (0 if model == "linear" else 2)
    if not ok:
        raise ConfigError(
            f"The 'n_classes' parameter of model {model!r} must be {expected}. "
            f"Got {n_classes!r} instead."
        )


def _check_array(fn, name, a, ndim, dtypes) -> np.ndarray:
    """``a`` must be a C-contiguous ``ndim``-D ndarray of one of ``dtypes``."""
    what = f"The {name!r} argument of {fn}"
    kinds = " or ".join(str(d) for d in dtypes)
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a numpy array of {kinds}. Got {type(a).__name__} instead.")
    if a.dtype not in dtypes:
        raise TypeError(f"{what} must have dtype {kinds}. Got {a.dtype} instead.")
    if a.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D. Got shape {a.shape} instead.")
    if not a.flags.c_contiguous:
        raise ValueError(
            f"{what} must be C-contiguous. Got a strided view; pass np.ascontiguousarray({name})."
        )
    return a


def _n_classes_of(fn, model, theta, d) -> int:
    """Classes implied by theta's size for an (n, d) X; ValueError if the size fits no model."""
    if model != "softmax":
        if theta.size != d + 1:
            raise ValueError(
                f"The 'theta' argument of {fn} must have size n_features + 1 = {d + 1} for model "
                f"{model!r}. Got size {theta.size} instead."
            )
        return 0 if model == "linear" else 2
    C, rest = divmod(theta.size, d + 1)
    if rest or C < 2:
        raise ValueError(
            f"The 'theta' argument of {fn} must have size n_classes * (n_features + 1) with "
            f"n_classes >= 2 and n_features = {d}. Got size {theta.size} instead."
        )
    return C


@njit
def _first_bad_row(idx, n, y, n_labels):
    """Position of the first idx entry outside [0, n) or, if n_labels > 0, whose label is
    outside [0, n_labels); -1 if there is none. One pass, nothing allocated."""
    for t in range(idx.shape[0]):
        i = idx[t]
        if i < 0 or i >= n:
            return t
        if n_labels > 0 and (y[i] < 0 or y[i] >= n_labels):
            return t
    return -1


def _check_rows(model, idx, n, y, n_labels) -> None:
    t = _first_bad_row(idx, n, y, n_labels)
    if t < 0:
        return
    i = int(idx[t])
    if not 0 <= i < n:
        raise ValueError(
            f"The 'idx' argument of loss_grad must index rows of X in [0, {n}). Got idx[{t}] = {i}."
        )
    raise DataError(
        f"Labels of model {model!r} must be integers in [0, {n_labels}). Got y[{i}] = {y[i]}; "
        f"check the dataset's labels and n_classes."
    )


def n_params(model: str, n_features: int, n_classes: int) -> int:
    """Length of the flat parameter vector: d + 1 (linear, logistic) or C * (d + 1) (softmax)."""
    _check_sizes(model, n_features, n_classes)
    return n_features + 1 if model != "softmax" else n_classes * (n_features + 1)


def init_params(
    model: str, n_features: int, n_classes: int, dtype, rng: np.random.Generator
) -> np.ndarray:
    """Initial parameters: zeros.

    All three losses are convex, so the start only changes the path, and zeros make every run
    start identically. ``rng`` is validated but not drawn from (a model needing random init
    can use it without changing this signature, and callers' random streams stay unchanged).
    """
    size = n_params(model, n_features, n_classes)
    if np.dtype(dtype) not in _FLOATS:
        raise TypeError(
            f"The 'dtype' parameter of init_params must be float32 or float64. "
            f"Got {np.dtype(dtype)} instead."
        )
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"The 'rng' parameter of init_params must be a numpy Generator. "
            f"Got {type(rng).__name__} instead."
        )
    return np.zeros(size, dtype=dtype)


def loss_grad(
    model: str, X: np.ndarray, y: np.ndarray, idx, theta: np.ndarray, grad_out: np.ndarray
) -> float:
    """Loss summed over rows ``idx`` of X; ``grad_out`` is overwritten with the summed gradient.

    X: C-contiguous (n, d) float32 or float64. y: (n,) of X's dtype (linear) or int64 labels
    (logistic: 0/1; softmax: 0..C-1). idx: integer row indices (any order, repeats allowed,
    may be empty), converted to contiguous int64. theta, grad_out: flat, X's dtype, C-contiguous.
    The result is bitwise identical for any number of numba threads. Returns a Python float.
    """
    _check_model(model)
    _check_array("loss_grad", "X", X, 2, _FLOATS)
    n, d = X.shape
    _check_array("loss_grad", "theta", theta, 1, (X.dtype,))
    n_labels = _n_classes_of("loss_grad", model, theta, d)
    _check_array("loss_grad", "grad_out", grad_out, 1, (X.dtype,))
    if grad_out.shape != theta.shape or not grad_out.flags.writeable:
        raise ValueError(
            f"The 'grad_out' argument of loss_grad must be a writeable array of theta's shape "
            f"{theta.shape}. Got shape {grad_out.shape}, writeable={grad_out.flags.writeable}."
        )
    y_dtype = X.dtype if model == "linear" else np.dtype(np.int64)
    if not isinstance(y, np.ndarray) or y.dtype != y_dtype:
        got = y.dtype if isinstance(y, np.ndarray) else type(y).__name__
        raise TypeError(
            f"The 'y' argument of loss_grad must be a {y_dtype} array for model {model!r}. "
            f"Got {got} instead."
        )
    if y.shape != (n,):
        raise ValueError(
            f"The 'y' argument of loss_grad must have shape ({n},), one entry per row of X. "
            f"Got shape {y.shape} instead."
        )
    y = np.ascontiguousarray(y)  # a no-op unless y is a strided view
    idx = np.asarray(idx)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise TypeError(
            f"The 'idx' argument of loss_grad must be a 1-D array of integers. "
            f"Got {idx.dtype} of shape {idx.shape} instead."
        )
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    _check_rows(model, idx, n, y, n_labels)  # n_labels is 0 for linear: no label check
    return float(_LOSS_GRAD[model](X, y, idx, theta, grad_out))


def predict(model: str, X: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Predictions in X's dtype: linear x.w + b (n,); logistic P(y=1) (n,); softmax P (n, C)."""
    _check_model(model)
    _check_array("predict", "X", X, 2, _FLOATS)
    _check_array("predict", "theta", theta, 1, (X.dtype,))
    C = _n_classes_of("predict", model, theta, X.shape[1])
    out = np.empty((X.shape[0], C) if model == "softmax" else X.shape[0], dtype=X.dtype)
    _PREDICT[model](X, theta, out)
    return out


def weights(model: str, theta: np.ndarray, n_features: int, n_classes: int):
    """Views (W, b) into theta: linear/logistic W (d,), b shape (); softmax W (C, d), b (C,)."""
    size = n_params(model, n_features, n_classes)
    if not isinstance(theta, np.ndarray) or theta.shape != (size,):
        got = f"shape {theta.shape}" if isinstance(theta, np.ndarray) else type(theta).__name__
        raise ValueError(
            f"The 'theta' argument of weights must be a 1-D array of size {size}. "
            f"Got {got} instead."
        )
    if model == "softmax":
        cd = n_classes * n_features
        return theta[:cd].reshape(n_classes, n_features), theta[cd:]
    return theta[:n_features], theta[n_features:].reshape(())


def l2_mask(model: str, n_features: int, n_classes: int) -> np.ndarray:
    """Boolean mask over theta: True for weights (penalised by L2), False for biases."""
    mask = np.zeros(n_params(model, n_features, n_classes), dtype=bool)
    mask[: n_features * (n_classes if model == "softmax" else 1)] = True
    return mask


__all__ = ["MODELS", "TASK_OF", "n_params", "init_params", "loss_grad", "predict", "weights",
           "l2_mask"]

"""Loss+gradient and predict kernels of every model, behind one validating API.

Every array is checked here (dtype, shape, contiguity, row and label range), so the private
numba kernels run unchecked and can never read outside an array. The models, their
parameter layout and :class:`ModelSpec` are declared in :mod:`mpisgd.models`; this module
adds what needs compiled code (initialisation, loss+gradient, predict). Kernels return
sums over rows, not means, and apply no regularisation: the caller divides and adds the
L2 term (see :func:`l2_mask`) once, after the cross-rank reduction.

The convex models are named by a string (``n_params("softmax", d, C)``...). A
:class:`ModelSpec` describes any model, the mlp included (its widths, activation and task
do not fit in a name), and the ``spec_*`` functions take one.

The sparse (CSR) kernels are ``kernels.sparse``, loaded on first use (PEP 562): a dense
run's ranks never import them.
"""

from __future__ import annotations

import importlib
import os
import threading

import numpy as np

from mpisgd.errors import DataError
from mpisgd.kernels import linear, logistic, mlp, softmax
from mpisgd.kernels.options import njit
from mpisgd.models import (
    ACTIVATIONS,
    MODELS,
    NAMES,
    TASK_OF,
    TASKS,
    ModelSpec,
    check_name,
    check_spec,
    l2_mask,
    n_params,
    spec_l2_mask,
    spec_n_params,
    spec_weights,
    weights,
)

SPEC_MODELS = NAMES

_LOSS_GRAD = {"linear": linear._loss_grad, "logistic": logistic._loss_grad,
              "softmax": softmax._loss_grad}
_PREDICT = {"linear": linear._predict, "logistic": logistic._predict_proba,
            "softmax": softmax._predict_proba}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _check_array(fn, name, a, ndim, dtypes) -> np.ndarray:
    """``a`` must be a C-contiguous ``ndim``-D ndarray of one of ``dtypes``."""
    if (isinstance(a, np.ndarray) and a.dtype in dtypes and a.ndim == ndim
            and a.flags.c_contiguous):
        return a   # the hot path: no message is built unless something is wrong
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


def _check_rows(fn, what, idx, n, y, n_labels) -> None:
    """``what`` names the model in the message, e.g. "model 'softmax'"."""
    t = _first_bad_row(idx, n, y, n_labels)
    if t < 0:
        return
    i = int(idx[t])
    if not 0 <= i < n:
        raise ValueError(
            f"The 'idx' argument of {fn} must index rows of X in [0, {n}). Got idx[{t}] = {i}."
        )
    raise DataError(
        f"Labels of {what} must be integers in [0, {n_labels}). Got y[{i}] = {y[i]}; "
        f"check the dataset's labels and n_classes."
    )


def _check_init(fn, dtype, rng) -> None:
    if np.dtype(dtype) not in _FLOATS:
        raise TypeError(
            f"The 'dtype' parameter of {fn} must be float32 or float64. "
            f"Got {np.dtype(dtype)} instead."
        )
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"The 'rng' parameter of {fn} must be a numpy Generator. "
            f"Got {type(rng).__name__} instead."
        )


def init_params(
    model: str, n_features: int, n_classes: int, dtype, rng: np.random.Generator
) -> np.ndarray:
    """Initial parameters: zeros.

    All three losses are convex, so the start only changes the path, and zeros make every run
    start identically. ``rng`` is validated but not drawn from (a model needing random init
    can use it without changing this signature, and callers' random streams stay unchanged).
    """
    size = n_params(model, n_features, n_classes)
    _check_init("init_params", dtype, rng)
    return np.zeros(size, dtype=dtype)


def _check_batch(fn, what, X, y, idx, theta, grad_out, regression, n_labels):
    """Check grad_out, y and idx against an already checked X and theta; return the
    contiguous (y, int64 idx) the kernels take. ``n_labels`` is 0 for regression."""
    n = X.shape[0]
    _check_array(fn, "grad_out", grad_out, 1, (X.dtype,))
    if grad_out.shape != theta.shape or not grad_out.flags.writeable:
        raise ValueError(
            f"The 'grad_out' argument of {fn} must be a writeable array of theta's shape "
            f"{theta.shape}. Got shape {grad_out.shape}, writeable={grad_out.flags.writeable}."
        )
    y_dtype = X.dtype if regression else np.dtype(np.int64)
    if not isinstance(y, np.ndarray) or y.dtype != y_dtype:
        got = y.dtype if isinstance(y, np.ndarray) else type(y).__name__
        raise TypeError(
            f"The 'y' argument of {fn} must be a {y_dtype} array for {what}. "
            f"Got {got} instead."
        )
    if y.shape != (n,):
        raise ValueError(
            f"The 'y' argument of {fn} must have shape ({n},), one entry per row of X. "
            f"Got shape {y.shape} instead."
        )
    y = np.ascontiguousarray(y)  # a no-op unless y is a strided view
    idx = np.asarray(idx)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise TypeError(
            f"The 'idx' argument of {fn} must be a 1-D array of integers. "
            f"Got {idx.dtype} of shape {idx.shape} instead."
        )
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    _check_rows(fn, what, idx, n, y, n_labels)  # n_labels is 0 for regression: no label check
    return y, idx


def loss_grad(
    model: str, X: np.ndarray, y: np.ndarray, idx, theta: np.ndarray, grad_out: np.ndarray
) -> float:
    """Loss summed over rows ``idx`` of X; ``grad_out`` is overwritten with the summed gradient.

    X: C-contiguous (n, d) float32 or float64. y: (n,) of X's dtype (linear) or int64 labels
    (logistic: 0/1; softmax: 0..C-1). idx: integer row indices (any order, repeats allowed,
    may be empty), converted to contiguous int64. theta, grad_out: flat, X's dtype, C-contiguous.
    The result is bitwise identical for any number of numba threads. Returns a Python float.
    """
    check_name(model)
    _check_array("loss_grad", "X", X, 2, _FLOATS)
    _check_array("loss_grad", "theta", theta, 1, (X.dtype,))
    n_labels = _n_classes_of("loss_grad", model, theta, X.shape[1])
    y, idx = _check_batch("loss_grad", f"model {model!r}", X, y, idx, theta, grad_out,
                          model == "linear", n_labels)
    return float(_LOSS_GRAD[model](X, y, idx, theta, grad_out))


def predict(model: str, X: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Predictions in X's dtype: linear x.w + b (n,); logistic P(y=1) (n,); softmax P (n, C)."""
    check_name(model)
    _check_array("predict", "X", X, 2, _FLOATS)
    _check_array("predict", "theta", theta, 1, (X.dtype,))
    C = _n_classes_of("predict", model, theta, X.shape[1])
    out = np.empty((X.shape[0], C) if model == "softmax" else X.shape[0], dtype=X.dtype)
    _PREDICT[model](X, theta, out)
    return out


_NO_LABELS = np.empty(0, dtype=np.int64)


# Unbound calls (the training objective, the per-chunk gradients of balanced reads) reuse
# one mlp LossGrad, and its buffers, per model and thread: one per call would allocate
# its activations every step.
_MLP_KERNELS = threading.local()


def _mlp_kernel(spec) -> mlp.LossGrad:
    kernels = _MLP_KERNELS.__dict__
    key = (spec.sizes, spec.task, spec.activation)
    if key not in kernels:
        kernels[key] = mlp.LossGrad(*_mlp_codes(spec))
    return kernels[key]


def _mlp_codes(spec):
    """(sizes as int64, task code, activation code): the kernels see integers, not strings."""
    return (np.array(spec.sizes, dtype=np.int64), TASKS.index(spec.task),
            ACTIVATIONS.index(spec.activation))


def _check_X_theta(fn, spec, X, theta) -> None:
    _check_array(fn, "X", X, 2, _FLOATS)
    if X.shape[1] != spec.n_features:
        raise ValueError(
            f"The 'X' argument of {fn} must have n_features = {spec.n_features} columns. "
            f"Got shape {X.shape} instead."
        )
    _check_array(fn, "theta", theta, 1, (X.dtype,))
    size = spec_n_params(spec)
    if theta.size != size:
        raise ValueError(
            f"The 'theta' argument of {fn} must have size {size} for {spec}. "
            f"Got size {theta.size} instead."
        )


def spec_init(spec: ModelSpec, dtype, rng: np.random.Generator) -> np.ndarray:
    """Initial parameters. Convex models: zeros (``rng`` untouched, see :func:`init_params`).

    mlp: uniform weights drawn from ``rng`` layer by layer, He for relu hidden layers and
    Glorot for tanh hidden layers and for the output layer; zero biases. The same ``rng``
    state gives the same parameters (float32: the float64 draws rounded).
    """
    check_spec("spec_init", spec)
    _check_init("spec_init", dtype, rng)
    if spec.name != "mlp":
        return init_params(spec.name, spec.n_features, spec.n_classes, dtype, rng)
    return mlp.init_weights(spec.sizes, ACTIVATIONS.index(spec.activation), np.dtype(dtype), rng)


def spec_loss_grad(
    spec: ModelSpec, X: np.ndarray, y: np.ndarray, idx, theta: np.ndarray, grad_out: np.ndarray
) -> float:
    """:func:`loss_grad` for any model: the loss summed over rows ``idx`` of X; ``grad_out``
    is overwritten with the summed gradient (same layout as theta).

    y: X's dtype for task regression, int64 labels in [0, n_classes) otherwise (binary:
    0/1). Bitwise identical for any number of numba threads. Returns a Python float.
    """
    check_spec("spec_loss_grad", spec)
    _check_X_theta("spec_loss_grad", spec, X, theta)
    regression = spec.task == "regression"
    y, idx = _check_batch("spec_loss_grad", f"model {spec.name!r}", X, y, idx, theta, grad_out,
                          regression, 0 if regression else spec.n_classes)
    if spec.name != "mlp":
        return float(_LOSS_GRAD[spec.name](X, y, idx, theta, grad_out))
    yf, yi = (y, _NO_LABELS) if regression else (np.empty(0, X.dtype), y)
    return _mlp_kernel(spec)(X, yf, yi, idx, theta, grad_out)


class BoundLossGrad:
    """:func:`spec_loss_grad` over one fixed (X, y), checked once: X, y and every label
    when it is made, then each call checks only what may change, theta, grad_out and the
    row indices (their range, in one compiled pass; no label is read again). The step
    loop calls this a thousand times an epoch, where the full checks cost as much as a
    tenth of the kernel.
    """

    def __init__(self, spec: ModelSpec, X: np.ndarray, y: np.ndarray):
        check_spec("BoundLossGrad", spec)
        _check_array("BoundLossGrad", "X", X, 2, _FLOATS)
        if X.shape[1] != spec.n_features:
            raise ValueError(f"The 'X' argument of BoundLossGrad must have n_features = "
                             f"{spec.n_features} columns. Got shape {X.shape} instead.")
        regression = spec.task == "regression"
        theta = np.zeros(spec_n_params(spec), X.dtype)
        every = np.arange(X.shape[0], dtype=np.int64)
        y, _ = _check_batch("BoundLossGrad", f"model {spec.name!r}", X, y, every, theta,
                            np.empty_like(theta), regression,
                            0 if regression else spec.n_classes)
        self.spec, self.X, self.y, self.n = spec, X, y, X.shape[0]
        self._shape = theta.shape
        if spec.name != "mlp":
            self._kernel, self._extra = _LOSS_GRAD[spec.name], ()
        else:
            yf, yi = (y, _NO_LABELS) if regression else (np.empty(0, X.dtype), y)
            # Its buffers are kept from step to step: one object per bound (X, y).
            self._kernel, self._extra = mlp.LossGrad(*_mlp_codes(spec)), (yf, yi)

    def __call__(self, idx: np.ndarray, theta: np.ndarray, grad_out: np.ndarray) -> float:
        """The loss summed over rows ``idx`` (int64, C-contiguous); ``grad_out`` is
        overwritten with the summed gradient. Same result as :func:`spec_loss_grad`."""
        X = self.X
        ok = (isinstance(idx, np.ndarray) and idx.dtype == np.int64 and idx.ndim == 1
              and idx.flags.c_contiguous and isinstance(theta, np.ndarray)
              and theta.dtype == X.dtype and theta.shape == self._shape
              and theta.flags.c_contiguous and isinstance(grad_out, np.ndarray)
              and grad_out.dtype == X.dtype and grad_out.shape == self._shape
              and grad_out.flags.c_contiguous and grad_out.flags.writeable)
        if not ok:   # the full checks name what is wrong
            return spec_loss_grad(self.spec, X, self.y, idx, theta, grad_out)
        _check_rows("BoundLossGrad", f"model {self.spec.name!r}", idx, self.n, self.y, 0)
        if self._extra:
            return self._kernel(X, *self._extra, idx, theta, grad_out)
        return float(self._kernel(X, self.y, idx, theta, grad_out))


# Seconds to compile a model's kernels on a cold cache (one dtype, one process, the
# 2-core VM of docs/performance.md: python -m mpisgd.kernels.warm into an empty cache).
# The mlp's since its training pass moved to NumPy's BLAS: 11.5 s against logistic's 9.5 s
# measured the same way on 2026-12-03 (a slower day of the VM; 18 s before the move).
COMPILE_SECONDS = {"linear": 6, "logistic": 6, "softmax": 8, "mlp": 8}


def compile_notice(spec: ModelSpec) -> str | None:
    """What to say before a model's kernels compile on a cold cache (nothing when numba
    has them cached): a first run must not sit silent for seconds to minutes."""
    # The mlp's training pass is NumPy's BLAS plus small kernels; its prediction kernel
    # is the big one to compile.
    kernel = mlp._predict if spec.name == "mlp" else _LOSS_GRAD[spec.name]
    try:   # numba's on-disk cache keeps one index file per kernel
        if os.path.exists(kernel._cache._cache_file._index_path):
            return None
    except AttributeError:   # another numba's internals: say nothing rather than guess
        return None
    where = os.environ.get("NUMBA_CACHE_DIR") or "numba's cache"
    return (f"mpisgd: compiling the {spec.name} kernels (first run on this machine with "
            f"this cache, about {COMPILE_SECONDS[spec.name]} s; later runs load them from "
            f"{where})")


def spec_predict(spec: ModelSpec, X: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Predictions in X's dtype: regression f (n,); binary P(y=1) (n,); multiclass P (n, C)."""
    check_spec("spec_predict", spec)
    _check_X_theta("spec_predict", spec, X, theta)
    if spec.name != "mlp":
        return predict(spec.name, X, theta)
    out = np.empty((X.shape[0], spec.n_outputs), dtype=X.dtype)
    mlp._predict(X, theta, *_mlp_codes(spec), out)
    return out if spec.task == "multiclass" else out.reshape(X.shape[0])


__all__ = ["MODELS", "SPEC_MODELS", "TASKS", "ACTIVATIONS", "TASK_OF", "n_params", "init_params",
           "loss_grad", "predict", "weights", "l2_mask", "ModelSpec", "spec_n_params",
           "spec_init", "spec_loss_grad", "spec_predict", "BoundLossGrad", "spec_weights",
           "spec_l2_mask"]


def __getattr__(name: str):
    if name == "sparse":
        return importlib.import_module("mpisgd.kernels.sparse")
    raise AttributeError(f"module 'mpisgd.kernels' has no attribute {name!r}")

"""Loss+gradient and predict kernels of every model, behind one validating API.

Every array is checked here (dtype, shape, contiguity, row and label range), so the private
numba kernels run unchecked and can never read outside an array. Parameters are one flat
vector per model: linear and logistic ``[w (d), b]``; softmax ``[W (C, d) row-major, b (C)]``;
mlp, layer after layer, ``[W_l (out, in) row-major, b_l (out)]`` (see :mod:`.mlp`).
Kernels return sums over rows, not means, and apply no regularisation: the caller divides
and adds the L2 term (see :func:`l2_mask`) once, after the cross-rank reduction.

The convex models are named by a string (``n_params("softmax", d, C)``...). A
:class:`ModelSpec` describes any model, the mlp included (its widths, activation and task
do not fit in a name), and the ``spec_*`` functions take one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpisgd.errors import ConfigError, DataError
from mpisgd.kernels import linear, logistic, mlp, softmax
from mpisgd.kernels.options import njit

MODELS = ("linear", "logistic", "softmax")  # the models a name alone describes
SPEC_MODELS = MODELS + ("mlp",)
TASKS = mlp.TASKS
ACTIVATIONS = mlp.ACTS
TASK_OF = {"linear": "regression", "logistic": "binary", "softmax": "multiclass"}
MAX_HIDDEN_LAYERS = 3

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


def n_params(model: str, n_features: int, n_classes: int) -> int:
    """Length of the flat parameter vector: d + 1 (linear, logistic) or C * (d + 1) (softmax)."""
    _check_sizes(model, n_features, n_classes)
    return n_features + 1 if model != "softmax" else n_classes * (n_features + 1)


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
    _check_model(model)
    _check_array("loss_grad", "X", X, 2, _FLOATS)
    _check_array("loss_grad", "theta", theta, 1, (X.dtype,))
    n_labels = _n_classes_of("loss_grad", model, theta, X.shape[1])
    y, idx = _check_batch("loss_grad", f"model {model!r}", X, y, idx, theta, grad_out,
                          model == "linear", n_labels)
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


# ----------------------------------------------------------------------------- model specs


@dataclass(frozen=True)
class ModelSpec:
    """Everything the kernels need to know about one model, validated when it is built.

    name: one of ``SPEC_MODELS``. n_features: an int >= 1. n_classes: 0 (regression), 2
    (binary) or C >= 2 (multiclass), as the dataset declares it. hidden: 1 to 3 layer widths
    for the mlp, () for the other models. activation: "relu" or "tanh" (used by the mlp).
    task: None takes the task the name implies (linear: regression, logistic: binary,
    softmax: multiclass) or, for the mlp, the one n_classes implies (0: regression, 2:
    binary with one logit, > 2: multiclass); an mlp given task="multiclass" and
    n_classes=2 gets two softmax outputs instead of one logit.
    """

    name: str
    n_features: int
    n_classes: int
    hidden: tuple = ()
    activation: str = "relu"
    task: str | None = None

    def __post_init__(self):
        if not (isinstance(self.name, str) and self.name in SPEC_MODELS):
            raise ConfigError(
                f"The 'model' parameter must be one of {SPEC_MODELS}. Got {self.name!r} instead."
            )
        if not (isinstance(self.activation, str) and self.activation in ACTIVATIONS):
            raise ConfigError(
                f"The 'activation' parameter must be one of {ACTIVATIONS}. "
                f"Got {self.activation!r} instead."
            )
        if self.name != "mlp":
            self._check_convex()
        else:
            self._check_mlp()

    def _check_convex(self) -> None:
        _check_sizes(self.name, self.n_features, self.n_classes)
        if not isinstance(self.hidden, (list, tuple)) or len(self.hidden):
            raise ConfigError(
                f"The 'hidden' parameter of model {self.name!r} must be () (only the mlp "
                f"has hidden layers). Got {self.hidden!r} instead."
            )
        object.__setattr__(self, "hidden", ())
        implied = TASK_OF[self.name]
        if self.task not in (None, implied):
            raise ConfigError(
                f"The 'task' parameter of model {self.name!r} must be None or {implied!r}. "
                f"Got {self.task!r} instead."
            )
        object.__setattr__(self, "task", implied)

    def _check_mlp(self) -> None:
        if not _is_int(self.n_features) or self.n_features < 1:
            raise ConfigError(
                f"The 'n_features' parameter must be an int >= 1. Got {self.n_features!r} "
                f"instead."
            )
        hidden = self.hidden
        if not (isinstance(hidden, (list, tuple)) and 1 <= len(hidden) <= MAX_HIDDEN_LAYERS
                and all(_is_int(h) and h >= 1 for h in hidden)):
            raise ConfigError(
                f"The 'hidden' parameter of model 'mlp' must be a list of 1 to "
                f"{MAX_HIDDEN_LAYERS} ints >= 1. Got {hidden!r} instead."
            )
        object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))
        c = self.n_classes
        if not (_is_int(c) and (c == 0 or c >= 2)):
            raise ConfigError(
                f"The 'n_classes' parameter of model 'mlp' must be 0 (regression) or an int "
                f">= 2. Got {c!r} instead."
            )
        task = self.task
        if task is None:
            task = "regression" if c == 0 else "binary" if c == 2 else "multiclass"
        ok = {"regression": c == 0, "binary": c == 2, "multiclass": c >= 2}
        if task not in ok or not ok[task]:
            raise ConfigError(
                f"The 'task' parameter of model 'mlp' must be None or one of {TASKS} "
                f"consistent with n_classes = {c!r} (0: regression, 2: binary, >= 2: "
                f"multiclass). Got {task!r} instead."
            )
        object.__setattr__(self, "task", task)

    @classmethod
    def from_config(cls, model_cfg, n_features: int, n_classes: int, task: str | None = None):
        """The spec of a ``[model]`` config section (``name``, ``hidden``, ``activation``).

        ``hidden`` and ``activation`` are kept for the mlp only and so is ``task`` (pass
        the dataset's task, e.g. ``info.task``): the other models imply theirs.
        """
        if model_cfg.name != "mlp":
            return cls(model_cfg.name, n_features, n_classes)
        return cls("mlp", n_features, n_classes, tuple(model_cfg.hidden),
                   model_cfg.activation, task)

    @property
    def n_outputs(self) -> int:
        """Units of the output layer: 1 (regression, binary logit) or C (multiclass)."""
        return self.n_classes if self.task == "multiclass" else 1

    @property
    def sizes(self) -> tuple:
        """Layer widths (n_features, *hidden, n_outputs)."""
        return (self.n_features, *self.hidden, self.n_outputs)


def _check_spec(fn, spec) -> None:
    if not isinstance(spec, ModelSpec):
        raise TypeError(
            f"The 'spec' argument of {fn} must be a ModelSpec. Got {type(spec).__name__} instead."
        )


_NO_LABELS = np.empty(0, dtype=np.int64)


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


def spec_n_params(spec: ModelSpec) -> int:
    """Length of the flat parameter vector; mlp: sum over layers of out * (in + 1)."""
    _check_spec("spec_n_params", spec)
    if spec.name != "mlp":
        return n_params(spec.name, spec.n_features, spec.n_classes)
    s = spec.sizes
    return sum(o * (i + 1) for i, o in zip(s[:-1], s[1:]))


def spec_init(spec: ModelSpec, dtype, rng: np.random.Generator) -> np.ndarray:
    """Initial parameters. Convex models: zeros (``rng`` untouched, see :func:`init_params`).

    mlp: uniform weights drawn from ``rng`` layer by layer, He for relu hidden layers and
    Glorot for tanh hidden layers and for the output layer; zero biases. The same ``rng``
    state gives the same parameters (float32: the float64 draws rounded).
    """
    _check_spec("spec_init", spec)
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
    _check_spec("spec_loss_grad", spec)
    _check_X_theta("spec_loss_grad", spec, X, theta)
    regression = spec.task == "regression"
    y, idx = _check_batch("spec_loss_grad", f"model {spec.name!r}", X, y, idx, theta, grad_out,
                          regression, 0 if regression else spec.n_classes)
    if spec.name != "mlp":
        return float(_LOSS_GRAD[spec.name](X, y, idx, theta, grad_out))
    yf, yi = (y, _NO_LABELS) if regression else (np.empty(0, X.dtype), y)
    return float(mlp._loss_grad(X, yf, yi, idx, theta, grad_out, *_mlp_codes(spec)))


def spec_predict(spec: ModelSpec, X: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Predictions in X's dtype: regression f (n,); binary P(y=1) (n,); multiclass P (n, C)."""
    _check_spec("spec_predict", spec)
    _check_X_theta("spec_predict", spec, X, theta)
    if spec.name != "mlp":
        return predict(spec.name, X, theta)
    out = np.empty((X.shape[0], spec.n_outputs), dtype=X.dtype)
    mlp._predict(X, theta, *_mlp_codes(spec), out)
    return out if spec.task == "multiclass" else out.reshape(X.shape[0])


def spec_weights(spec: ModelSpec, theta: np.ndarray):
    """Views into theta: :func:`weights` for the convex models; for the mlp a list of
    (W (out, in), b (out)) per layer, input layer first."""
    _check_spec("spec_weights", spec)
    if spec.name != "mlp":
        return weights(spec.name, theta, spec.n_features, spec.n_classes)
    size = spec_n_params(spec)
    if not isinstance(theta, np.ndarray) or theta.shape != (size,):
        got = f"shape {theta.shape}" if isinstance(theta, np.ndarray) else type(theta).__name__
        raise ValueError(
            f"The 'theta' argument of spec_weights must be a 1-D array of size {size}. "
            f"Got {got} instead."
        )
    layers, off = [], 0
    for n_in, n_out in zip(spec.sizes[:-1], spec.sizes[1:]):
        end = off + n_out * n_in
        layers.append((theta[off:end].reshape(n_out, n_in), theta[end : end + n_out]))
        off = end + n_out
    return layers


def spec_l2_mask(spec: ModelSpec) -> np.ndarray:
    """Boolean mask over theta: True for weights (penalised by L2), False for biases."""
    _check_spec("spec_l2_mask", spec)
    if spec.name != "mlp":
        return l2_mask(spec.name, spec.n_features, spec.n_classes)
    mask = np.zeros(spec_n_params(spec), dtype=bool)
    for W, _ in spec_weights(spec, mask):
        W[...] = True
    return mask


__all__ = ["MODELS", "SPEC_MODELS", "TASKS", "ACTIVATIONS", "TASK_OF", "n_params", "init_params",
           "loss_grad", "predict", "weights", "l2_mask", "ModelSpec", "spec_n_params",
           "spec_init", "spec_loss_grad", "spec_predict", "spec_weights", "spec_l2_mask"]

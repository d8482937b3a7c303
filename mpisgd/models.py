"""The model registry: every model mpisgd trains, declared once.

The job file's ``model.name`` choices, the task each model can learn, the parameter
layout (:class:`ModelSpec`), the kernels' dispatch (:mod:`mpisgd.kernels`) and the model
file (:mod:`mpisgd.store.modelfile`) all derive from :data:`REGISTRY`. Pure Python and
numpy: the configuration and the command line import it without compiling anything.

Parameters are one flat vector per model: linear and logistic ``[w (d), b]``; softmax
``[W (C, d) row-major, b (C)]``; mlp, layer after layer, ``[W_l (out, in) row-major,
b_l (out)]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpisgd.errors import ConfigError

# A dataset's task (the kernels see its position as an integer code).
TASKS = ("regression", "binary", "multiclass")
ACTIVATIONS = ("relu", "tanh")   # mlp hidden layers; codes 0, 1
MAX_HIDDEN_LAYERS = 3


@dataclass(frozen=True)
class ModelKind:
    """One entry of the registry."""

    name: str
    tasks: tuple[str, ...]        # the dataset tasks it can learn
    implied_task: str | None      # the task its name fixes; None: the data's (mlp)
    hidden: bool                  # has hidden layers ([model] hidden, activation)
    doc: str


REGISTRY = {k.name: k for k in (
    ModelKind("linear", ("regression",), "regression", False,
              "least squares: x.w + b"),
    ModelKind("logistic", ("binary",), "binary", False,
              "logistic regression: P(y=1) = sigmoid(x.w + b)"),
    ModelKind("softmax", ("multiclass", "binary"), "multiclass", False,
              "multinomial logistic regression over C classes"),
    ModelKind("mlp", TASKS, None, True,
              "multilayer perceptron: 1 to 3 hidden layers, any task"),
)}
NAMES = tuple(REGISTRY)                                        # every model
MODELS = tuple(n for n, k in REGISTRY.items() if not k.hidden)  # a name alone describes
TASK_OF = {n: k.implied_task for n, k in REGISTRY.items() if k.implied_task}


def suggest(task: str) -> str:
    """The simplest model for a dataset task, e.g. "binary" -> "logistic"."""
    return next(n for n, t in TASK_OF.items() if t == task)


def check_task(name: str, task: str, where: str) -> None:
    """ConfigError unless model ``name`` can learn a dataset of ``task`` (``where``: the data)."""
    if task not in REGISTRY[name].tasks:
        raise ConfigError(f"model '{name}' cannot learn a {task} task ({where}); use "
                          f"model.name = '{suggest(task)}'.")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_name(model) -> None:
    if not (isinstance(model, str) and model in MODELS):
        raise ConfigError(f"The 'model' parameter must be one of {MODELS}. Got {model!r} instead.")


def _check_sizes(model, n_features, n_classes) -> None:
    """Validate (model, n_features, n_classes): n_classes is 0, 2 and >= 2 for the three models."""
    check_name(model)
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


def n_params(model: str, n_features: int, n_classes: int) -> int:
    """Length of the flat parameter vector: d + 1 (linear, logistic) or C * (d + 1) (softmax)."""
    _check_sizes(model, n_features, n_classes)
    return n_features + 1 if model != "softmax" else n_classes * (n_features + 1)


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


@dataclass(frozen=True)
class ModelSpec:
    """Everything the kernels need to know about one model, validated when it is built.

    name: one of ``NAMES``. n_features: an int >= 1. n_classes: 0 (regression), 2
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
        if not (isinstance(self.name, str) and self.name in NAMES):
            raise ConfigError(
                f"The 'model' parameter must be one of {NAMES}. Got {self.name!r} instead."
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


def check_spec(fn, spec) -> None:
    if not isinstance(spec, ModelSpec):
        raise TypeError(
            f"The 'spec' argument of {fn} must be a ModelSpec. Got {type(spec).__name__} instead."
        )


def spec_n_params(spec: ModelSpec) -> int:
    """Length of the flat parameter vector; mlp: sum over layers of out * (in + 1)."""
    check_spec("spec_n_params", spec)
    if spec.name != "mlp":
        return n_params(spec.name, spec.n_features, spec.n_classes)
    s = spec.sizes
    return sum(o * (i + 1) for i, o in zip(s[:-1], s[1:]))


def spec_weights(spec: ModelSpec, theta: np.ndarray):
    """Views into theta: :func:`weights` for the convex models; for the mlp a list of
    (W (out, in), b (out)) per layer, input layer first."""
    check_spec("spec_weights", spec)
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
    check_spec("spec_l2_mask", spec)
    if spec.name != "mlp":
        return l2_mask(spec.name, spec.n_features, spec.n_classes)
    mask = np.zeros(spec_n_params(spec), dtype=bool)
    for W, _ in spec_weights(spec, mask):
        W[...] = True
    return mask



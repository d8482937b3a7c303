"""Lazy optimizers for sparse steps: only the keys a step touched change, weight and state.

A sparse model (hashed features, up to 10^8 keys per server) takes steps that touch a few
thousand keys. An optimizer here holds its state dense over the key range [lo, lo + n)
of the server (one array per state variable, the dtype of theta: 4 bytes a key in
float32) and updates, per step, theta and the state of the step's keys only, in numba
loops over the keys. The rules (docs/sparse.md says where lazy differs from dense):

- ``sgd``: theta -= lr * g. With momentum the velocity of a key decays only when the key
  is touched (lazy momentum), where dense SGD decays it, and keeps moving the weight,
  every step.
- ``adagrad``: sum += g^2; theta -= lr * g / (sqrt(sum) + eps). Exact: a key not touched
  has a zero gradient, which changes neither its sum nor its weight in dense AdaGrad.
- ``adam``: lazy Adam (PyTorch SparseAdam, TensorFlow LazyAdam): the moments of touched
  keys only, bias-corrected by the global step count t (every ``step`` call counts).
- ``ftrl``: FTRL-Proximal (McMahan et al., "Ad click prediction", KDD 2013, Algorithm 1),
  per-key rate lr / (beta + sqrt(n)); state ``z`` and ``n``; the weight is the closed form
  of z and n, exactly 0 while |z| <= l1. ``lr`` plays alpha (as TensorFlow's Ftrl
  ``learning_rate``); beta, l1, l2 are ``optimizer.ftrl_beta``, ``ftrl_l1``, ``ftrl_l2``.

When every key is touched every step, sgd, adagrad and adam compute bitwise what the dense
optimizers of :mod:`mpisgd.optim` compute: the same operations in the same order, in the
vector's dtype, with no FMA contraction. An optimizer of the key range [a, b) computes
bitwise what the whole-range one computes there, given every global step (with the
step's keys in [a, b), possibly none), so a server calls ``step`` once per global step.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from mpisgd.config import OptimizerConfig
from mpisgd.errors import ConfigError

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# No fastmath at all: 'contract' would fuse m*b1 + g*(1-b1) into one FMA, and the lazy
# rules would no longer equal the NumPy dense optimizers bit for bit. The key loops are
# memory-bound (a cache miss per key), so SIMD flags would buy nothing.
_JIT = dict(nogil=True, cache=True, error_model="numpy")


# ----------------------------------------------------------------------------- kernels
@numba.njit(**_JIT)
def _first_bad_key(keys, lo, hi):
    """Index of the first key outside [lo, hi) or not above its predecessor; -1 if none."""
    for j in range(keys.size):
        k = keys[j]
        if k < lo or k >= hi or (j > 0 and k <= keys[j - 1]):
            return j
    return -1


@numba.njit(**_JIT)
def _sgd(theta, keys, grad, lo, lr):
    for j in range(keys.size):
        theta[keys[j] - lo] -= grad[j] * lr


@numba.njit(**_JIT)
def _sgd_momentum(theta, velocity, keys, grad, lo, lr, mu, nesterov):
    for j in range(keys.size):
        i = keys[j] - lo
        g = grad[j]
        v = velocity[i] * mu + g
        velocity[i] = v
        if nesterov:
            theta[i] -= (v * mu + g) * lr
        else:
            theta[i] -= v * lr


@numba.njit(**_JIT)
def _adagrad(theta, acc, keys, grad, lo, lr, eps):
    for j in range(keys.size):
        i = keys[j] - lo
        g = grad[j]
        s = acc[i] + g * g
        acc[i] = s
        theta[i] -= g / (np.sqrt(s) + eps) * lr


@numba.njit(**_JIT)
def _adam(theta, exp_avg, exp_avg_sq, keys, grad, lo, b1, one_b1, b2, one_b2, c2, eps,
          step_size):
    for j in range(keys.size):
        i = keys[j] - lo
        g = grad[j]
        m = exp_avg[i] * b1 + g * one_b1
        v = exp_avg_sq[i] * b2 + g * g * one_b2
        exp_avg[i] = m
        exp_avg_sq[i] = v
        theta[i] -= m / (np.sqrt(v) / c2 + eps) * step_size


@numba.njit(**_JIT)
def _ftrl(theta, z, n, keys, grad, lo, alpha, beta, l1, l2):
    for j in range(keys.size):
        i = keys[j] - lo
        g = grad[j]
        n_old = n[i]
        n_new = n_old + g * g
        sigma = (np.sqrt(n_new) - np.sqrt(n_old)) / alpha
        zi = z[i] + (g - sigma * theta[i])
        z[i] = zi
        n[i] = n_new
        if abs(zi) <= l1:
            theta[i] = 0
        else:
            shrunk = zi - l1 if zi > 0 else zi + l1
            theta[i] = -shrunk / ((beta + np.sqrt(n_new)) / alpha + l2)


# ----------------------------------------------------------------------------- optimizers
class SparseOptimizer:
    """The shared interface: ``step`` on the touched keys in place, ``state``/``load_state``
    for exact resume, ``held_bytes`` for the memory report.

    ``n_params`` keys starting at global key ``lo`` (a server's range); ``dtype`` that of
    theta, the gradient values and every state array.
    """

    zero_rate_ok = True  # lr = 0 moves no weight, as in mpisgd.optim

    def __init__(self, cfg: OptimizerConfig, n_params: int, dtype, lo: int = 0):
        name = type(self).__name__
        for pname, value in (("n_params", n_params), ("lo", lo)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"The {pname!r} parameter of {name} must be an int >= 0. "
                                 f"Got {value!r} instead.")
        if np.dtype(dtype) not in _FLOATS:
            raise TypeError(f"The 'dtype' parameter of {name} must be float32 or float64. "
                            f"Got {np.dtype(dtype)} instead.")
        self.cfg = cfg
        self.n_params = int(n_params)
        self.lo = int(lo)
        self.dtype = np.dtype(dtype)
        self.steps = 0  # global steps so far, touched or not: lazy Adam's bias correction
        self._buffers: dict[str, np.ndarray] = {}

    def _buffer(self, name: str) -> np.ndarray:
        # np.zeros maps zero pages: a 400 MB state costs memory only where keys were touched.
        self._buffers[name] = np.zeros(self.n_params, dtype=self.dtype)
        return self._buffers[name]

    def _scalar(self, value: float):
        """A Python float as the state's dtype, so float32 kernels keep float32 arithmetic."""
        return self.dtype.type(value)

    def step(self, theta: np.ndarray, keys: np.ndarray, grad: np.ndarray, lr: float) -> None:
        """Update theta[keys - lo] and the state of ``keys`` in place; nothing else changes.

        theta: this range's weights (n_params, dtype, contiguous, writeable); keys: sorted
        unique int64 global keys in [lo, lo + n_params), possibly none; grad: their
        gradient values (same length, dtype); lr: this step's rate. Call it for every
        global step, also with no keys, so the step count stays global.
        """
        self._check_step(theta, keys, grad, lr)
        self.steps += 1
        if keys.size:
            self._update(theta, keys, grad, float(lr))

    def _check_step(self, theta, keys, grad, lr) -> None:
        name = f"{type(self).__name__}.step"
        for arg, a, dtype in (("theta", theta, self.dtype), ("keys", keys, np.dtype(np.int64)),
                              ("grad", grad, self.dtype)):
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != 1 \
                    or not a.flags.c_contiguous:
                got = (f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray)
                       else type(a).__name__)
                raise TypeError(f"The {arg!r} argument of {name} must be a contiguous 1-D "
                                f"{dtype} array. Got {got} instead.")
        if theta.size != self.n_params or not theta.flags.writeable:
            raise ValueError(f"The 'theta' argument of {name} must be a writeable array of "
                             f"{self.n_params} entries (the key range's weights). Got "
                             f"{theta.size} entries, writeable={theta.flags.writeable}.")
        if grad.size != keys.size:
            raise ValueError(f"The 'grad' argument of {name} must hold one value per key: "
                             f"{keys.size}. Got {grad.size} instead.")
        if not (isinstance(lr, (int, float, np.floating, np.integer)) and math.isfinite(lr)
                and (lr > 0 or (lr == 0 and self.zero_rate_ok))):
            bound = "[0, inf)" if self.zero_rate_ok else "(0, inf)"
            raise ValueError(f"The 'lr' argument of {name} must be a float in {bound}. "
                             f"Got {lr!r} instead.")
        self._check_keys(keys, name)

    def _check_keys(self, keys, name: str) -> None:
        hi = self.lo + self.n_params
        j = _first_bad_key(keys, self.lo, hi)
        if j < 0:
            return
        k = int(keys[j])
        if not self.lo <= k < hi:
            why = f"keys[{j}] = {k} is outside this optimizer's key range [{self.lo}, {hi})"
        else:
            prev = int(keys[j - 1])
            why = (f"keys[{j}] = {k} repeats keys[{j - 1}]" if k == prev else
                   f"keys[{j}] = {k} comes after keys[{j - 1}] = {prev}")
        raise ValueError(f"The 'keys' argument of {name} must be sorted unique int64 keys "
                         f"in [{self.lo}, {hi}): {why}. Merge the step's keys with np.unique "
                         f"(summing their gradients) and route each key to its range.")

    def _update(self, theta, keys, grad, lr: float) -> None:
        raise NotImplementedError

    def buffers(self) -> dict[str, np.ndarray]:
        """The live state arrays by name (updated in place by ``step``), not copies."""
        return dict(self._buffers)

    def held_bytes(self) -> int:
        """Bytes of state this optimizer holds (theta, the caller's, not counted)."""
        return sum(b.nbytes for b in self._buffers.values())

    def state(self) -> dict[str, np.ndarray]:
        """Copies of every state array, plus ``step`` (a 0-d int64 array): the same layout
        as :meth:`mpisgd.optim.Optimizer.state`, so ``mpisgd.optim.slice_state`` cuts a
        whole-range state for a sub-range."""
        out = {"step": np.array(self.steps, dtype=np.int64)}
        out.update({k: v.copy() for k, v in self._buffers.items()})
        return out

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned, so the next steps repeat bitwise."""
        expected = {"step": None, **self._buffers}
        if set(state) != set(expected):
            raise ValueError(
                f"The 'state' argument of {type(self).__name__}.load_state must have the keys "
                f"{sorted(expected)}. Got {sorted(state)} instead; was it saved by another "
                f"optimizer (optimizer.name) or momentum setting?")
        step = np.asarray(state["step"])
        if step.size != 1 or step.dtype.kind not in "iu" or int(step.reshape(())) < 0:
            raise ValueError(f"The 'step' entry of the state must be one integer >= 0. "
                             f"Got {step!r} instead.")
        for key, buf in self._buffers.items():
            a = np.asarray(state[key])
            if a.shape != buf.shape or a.dtype != buf.dtype:
                raise ValueError(
                    f"The {key!r} entry of the state must be a {buf.dtype} array of shape "
                    f"{buf.shape}. Got {a.dtype} of shape {a.shape} instead; the checkpoint "
                    f"is from another model size, key range or dtype.")
        for key, buf in self._buffers.items():
            np.copyto(buf, state[key])
        self.steps = int(step.reshape(()))


class LazySGD(SparseOptimizer):
    """SGD; with momentum a ``velocity`` per key that decays only when the key is touched."""

    def __init__(self, cfg: OptimizerConfig, n_params: int, dtype, lo: int = 0):
        super().__init__(cfg, n_params, dtype, lo)
        self.velocity = self._buffer("velocity") if cfg.momentum > 0 else None

    def _update(self, theta, keys, grad, lr):
        if self.velocity is None:
            _sgd(theta, keys, grad, self.lo, self._scalar(lr))
        else:
            _sgd_momentum(theta, self.velocity, keys, grad, self.lo, self._scalar(lr),
                          self._scalar(self.cfg.momentum), bool(self.cfg.nesterov))


class SparseAdagrad(SparseOptimizer):
    """AdaGrad on the touched keys: exactly dense AdaGrad (zero gradients change nothing)."""

    def __init__(self, cfg: OptimizerConfig, n_params: int, dtype, lo: int = 0):
        super().__init__(cfg, n_params, dtype, lo)
        self.sum = self._buffer("sum")

    def _update(self, theta, keys, grad, lr):
        _adagrad(theta, self.sum, keys, grad, self.lo, self._scalar(lr),
                 self._scalar(self.cfg.eps))


class LazyAdam(SparseOptimizer):
    """Lazy Adam (SparseAdam): moments ``exp_avg``, ``exp_avg_sq`` of touched keys only,
    bias correction by the global step count, as dense Adam's formula."""

    def __init__(self, cfg: OptimizerConfig, n_params: int, dtype, lo: int = 0):
        super().__init__(cfg, n_params, dtype, lo)
        self.exp_avg = self._buffer("exp_avg")
        self.exp_avg_sq = self._buffer("exp_avg_sq")

    def _update(self, theta, keys, grad, lr):
        b1, b2, t, s = self.cfg.beta1, self.cfg.beta2, self.steps, self._scalar
        # The scalars exactly as mpisgd.optim.Adam rounds them, for bitwise equality.
        _adam(theta, self.exp_avg, self.exp_avg_sq, keys, grad, self.lo, s(b1), s(1.0 - b1),
              s(b2), s(1.0 - b2), s(math.sqrt(1.0 - b2**t)), s(self.cfg.eps),
              s(lr / (1.0 - b1**t)))


class FTRL(SparseOptimizer):
    """FTRL-Proximal: state ``z`` and ``n`` per key; lr is alpha; theta holds the weights
    the closed form gives (0 for a key never touched), so a step needs no other pass."""

    zero_rate_ok = False  # alpha divides: a rate of 0 is no FTRL step

    def __init__(self, cfg: OptimizerConfig, n_params: int, dtype, lo: int = 0):
        super().__init__(cfg, n_params, dtype, lo)
        self.z = self._buffer("z")
        self.n = self._buffer("n")

    def _update(self, theta, keys, grad, lr):
        s = self._scalar
        _ftrl(theta, self.z, self.n, keys, grad, self.lo, s(lr), s(self.cfg.ftrl_beta),
              s(self.cfg.ftrl_l1), s(self.cfg.ftrl_l2))


_SPARSE = {"sgd": LazySGD, "adagrad": SparseAdagrad, "adam": LazyAdam, "ftrl": FTRL}


def make_sparse_optimizer(cfg: OptimizerConfig, n_params: int, dtype,
                          lo: int = 0) -> SparseOptimizer:
    """The lazy optimizer ``cfg.name`` for the keys [lo, lo + n_params) (a server's range)."""
    cls = _SPARSE.get(cfg.name)
    if cls is None:
        raise ConfigError(
            f"optimizer.name = '{cfg.name}' has no lazy (sparse) form: use one of "
            f"{', '.join(repr(n) for n in _SPARSE)}. adamw decays every weight every step, "
            f"which a step touching a few keys cannot do; adam with model.l2 (an L2 term "
            f"in the gradients of the touched keys) regularises lazily instead.")
    return cls(cfg, n_params, dtype, lo)

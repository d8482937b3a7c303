"""Optimizers, learning-rate schedules and gradient clipping on flat parameter vectors.

An optimizer acts on one contiguous vector or a contiguous slice of it, so the same code
serves every rank in allreduce mode and a server's key range in parameter-server mode.
Every update is elementwise (+, -, *, /, sqrt: correctly rounded, so SIMD and scalar loops
agree): an optimizer built for the slice [a:b] computes bitwise what the whole-vector
optimizer computes there. Only clipping needs a sum over the whole vector; the caller
reduces it and passes it to :func:`clip_factor`.

Semantics follow torch.optim: SGD (momentum buffer v = mu*v + g; Nesterov uses g + mu*v),
Adagrad (lr_decay = 0, initial_accumulator_value = 0), Adam and AdamW (amsgrad = False,
bias-corrected moments; AdamW decays the weights by lr*weight_decay before the Adam step).
L2 of ``model.l2`` is not the optimizer's business: the caller adds it to the gradient.
"""

from __future__ import annotations

import math

import numpy as np

from mpisgd.config import OptimizerConfig

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# torch.nn.utils.clip_grad_norm_ adds this to the norm, so a zero gradient divides by 1e-6.
_CLIP_EPS = 1e-6


class Optimizer:
    """The shared interface: ``step`` in place, ``state``/``load_state`` for exact resume.

    ``n_params`` is the length of the vector (or slice) this instance updates, ``dtype``
    that of theta and the gradient; state buffers have the same length and dtype.
    """

    def __init__(self, cfg: OptimizerConfig, n_params: int, dtype, decay_mask=None,
                 storage=None):
        if not isinstance(n_params, (int, np.integer)) or isinstance(n_params, bool) \
                or n_params < 0:
            raise ValueError(
                f"The 'n_params' parameter of {type(self).__name__} must be an int >= 0. "
                f"Got {n_params!r} instead."
            )
        if np.dtype(dtype) not in _FLOATS:
            raise TypeError(
                f"The 'dtype' parameter of {type(self).__name__} must be float32 or float64. "
                f"Got {np.dtype(dtype)} instead."
            )
        self.cfg = cfg
        self.n_params = int(n_params)
        self.dtype = np.dtype(dtype)
        self.steps = 0  # updates applied so far; Adam's bias correction counts them
        self._buffers: dict[str, np.ndarray] = {}
        # storage(name) -> a zeroed array of n_params to keep a state buffer in (a rank's
        # slice of a node-shared window); None: private arrays.
        self._storage = storage
        # One scratch vector, so a step allocates nothing.
        self._tmp = np.empty(self.n_params, dtype=self.dtype)

    def _buffer(self, name: str) -> np.ndarray:
        if self._storage is None:
            self._buffers[name] = np.zeros(self.n_params, dtype=self.dtype)
        else:
            self._buffers[name] = self._storage(name)
        return self._buffers[name]

    def _scalar(self, value: float):
        """A Python float as the vector's dtype: float32 runs keep float32 arithmetic."""
        return self.dtype.type(value)

    def step(self, theta: np.ndarray, grad: np.ndarray, lr: float) -> None:
        """Update ``theta`` in place from the (averaged, regularised, clipped) gradient.

        theta, grad: 1-D arrays of this optimizer's length and dtype (a contiguous slice
        of a larger vector is fine); theta must be writeable. lr: the rate of this step.
        """
        self._check_step(theta, grad, lr)
        self.steps += 1
        self._update(theta, grad, float(lr))

    def _check_step(self, theta, grad, lr) -> None:
        for name, a in (("theta", theta), ("grad", grad)):
            if not isinstance(a, np.ndarray) or a.dtype != self.dtype:
                got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
                raise TypeError(
                    f"The {name!r} argument of {type(self).__name__}.step must be a {self.dtype} "
                    f"array. Got {got} instead."
                )
            if a.shape != (self.n_params,):
                raise ValueError(
                    f"The {name!r} argument of {type(self).__name__}.step must have shape "
                    f"({self.n_params},), the optimizer's length. Got shape {a.shape} instead."
                )
        if not theta.flags.writeable:
            raise ValueError(f"The 'theta' argument of {type(self).__name__}.step must be "
                             f"writeable: it is updated in place.")
        if not (isinstance(lr, (int, float, np.floating, np.integer)) and math.isfinite(lr)
                and lr >= 0):
            raise ValueError(
                f"The 'lr' argument of {type(self).__name__}.step must be a float in [0, inf). "
                f"Got {lr!r} instead."
            )

    def _update(self, theta, grad, lr: float) -> None:
        raise NotImplementedError

    def buffers(self) -> dict[str, np.ndarray]:
        """The live state arrays by name (updated in place by ``step``), not copies."""
        return dict(self._buffers)

    def state(self) -> dict[str, np.ndarray]:
        """Copies of every state array, plus ``step`` (a 0-d int64 array): a checkpoint of
        this instance (a server saves the state of its own slice)."""
        out = {"step": np.array(self.steps, dtype=np.int64)}
        out.update({k: v.copy() for k, v in self._buffers.items()})
        return out

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned (same keys, shapes and dtypes), so the next
        steps repeat bitwise those of the run that saved it."""
        expected = self.state()
        if set(state) != set(expected):
            raise ValueError(
                f"The 'state' argument of {type(self).__name__}.load_state must have the keys "
                f"{sorted(expected)}. Got {sorted(state)} instead; was it saved by another "
                f"optimizer (optimizer.name) or momentum setting?"
            )
        step = np.asarray(state["step"])
        if step.size != 1 or step.dtype.kind not in "iu" or int(step.reshape(())) < 0:
            raise ValueError(
                f"The 'step' entry of the state must be one integer >= 0. Got {step!r} instead."
            )
        for key, current in expected.items():
            if key == "step":
                continue
            a = np.asarray(state[key])
            if a.shape != current.shape or a.dtype != current.dtype:
                raise ValueError(
                    f"The {key!r} entry of the state must be a {current.dtype} array of shape "
                    f"{current.shape}. Got {a.dtype} of shape {a.shape} instead; the "
                    f"checkpoint is from another model size, slice or dtype."
                )
        for key, buf in self._buffers.items():
            np.copyto(buf, state[key])
        self.steps = int(step.reshape(()))


class SGD(Optimizer):
    """Plain, momentum or Nesterov SGD; state: the momentum buffer ``velocity``."""

    def __init__(self, cfg: OptimizerConfig, n_params: int, dtype, decay_mask=None, storage=None):
        super().__init__(cfg, n_params, dtype, storage=storage)
        self.momentum = cfg.momentum
        self.nesterov = cfg.nesterov
        self.velocity = self._buffer("velocity") if cfg.momentum > 0 else None

    def _update(self, theta, grad, lr):
        tmp = self._tmp
        if self.velocity is None:
            np.multiply(grad, self._scalar(lr), out=tmp)
            theta -= tmp
            return
        v, mu = self.velocity, self._scalar(self.momentum)
        v *= mu
        v += grad
        if self.nesterov:
            np.multiply(v, mu, out=tmp)
            tmp += grad
            tmp *= self._scalar(lr)
            theta -= tmp
        else:
            np.multiply(v, self._scalar(lr), out=tmp)
            theta -= tmp


class Adagrad(Optimizer):
    """torch.optim.Adagrad: sum += g^2; theta -= lr * g / (sqrt(sum) + eps); state ``sum``."""

    def __init__(self, cfg: OptimizerConfig, n_params: int, dtype, decay_mask=None, storage=None):
        super().__init__(cfg, n_params, dtype, storage=storage)
        self.sum = self._buffer("sum")

    def _update(self, theta, grad, lr):
        tmp = self._tmp
        np.multiply(grad, grad, out=tmp)
        self.sum += tmp
        np.sqrt(self.sum, out=tmp)
        tmp += self._scalar(self.cfg.eps)
        np.divide(grad, tmp, out=tmp)
        tmp *= self._scalar(lr)
        theta -= tmp


class Adam(Optimizer):
    """torch.optim.Adam (amsgrad off); state: ``exp_avg`` (m) and ``exp_avg_sq`` (v).

    m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    theta -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), t = steps so far.
    """

    def __init__(self, cfg: OptimizerConfig, n_params: int, dtype, decay_mask=None, storage=None):
        super().__init__(cfg, n_params, dtype, storage=storage)
        self.exp_avg = self._buffer("exp_avg")
        self.exp_avg_sq = self._buffer("exp_avg_sq")

    def _update(self, theta, grad, lr):
        b1, b2, t = self.cfg.beta1, self.cfg.beta2, self.steps
        m, v, tmp = self.exp_avg, self.exp_avg_sq, self._tmp
        m *= self._scalar(b1)
        np.multiply(grad, self._scalar(1.0 - b1), out=tmp)
        m += tmp
        v *= self._scalar(b2)
        np.multiply(grad, grad, out=tmp)
        tmp *= self._scalar(1.0 - b2)
        v += tmp
        # Bias corrections as torch computes them: scalars, the same on every slice.
        step_size = lr / (1.0 - b1**t)
        np.sqrt(v, out=tmp)
        tmp /= self._scalar(math.sqrt(1.0 - b2**t))
        tmp += self._scalar(self.cfg.eps)
        np.divide(m, tmp, out=tmp)
        tmp *= self._scalar(step_size)
        theta -= tmp


class AdamW(Adam):
    """torch.optim.AdamW: theta *= 1 - lr * weight_decay, then the Adam step.

    ``decay_mask`` (bool, this instance's length; a server passes its slice of the mask)
    limits the decay to the True entries, e.g. ``kernels.l2_mask``: weights, not biases.
    None decays every entry, as torch does for a single parameter group.
    """

    def __init__(self, cfg: OptimizerConfig, n_params: int, dtype, decay_mask=None, storage=None):
        super().__init__(cfg, n_params, dtype, storage=storage)
        if decay_mask is not None:
            if not (isinstance(decay_mask, np.ndarray) and decay_mask.dtype == np.bool_
                    and decay_mask.shape == (self.n_params,)):
                got = (f"{decay_mask.dtype} of shape {decay_mask.shape}"
                       if isinstance(decay_mask, np.ndarray) else type(decay_mask).__name__)
                raise ValueError(
                    f"The 'decay_mask' parameter of AdamW must be a bool array of shape "
                    f"({self.n_params},). Got {got} instead."
                )
            decay_mask = decay_mask.copy()  # the caller's array may change later
        self.decay_mask = decay_mask

    def _update(self, theta, grad, lr):
        wd = self.cfg.weight_decay
        if wd:
            factor = self._scalar(1.0 - lr * wd)
            if self.decay_mask is None:
                theta *= factor
            else:
                np.multiply(theta, factor, out=theta, where=self.decay_mask)
        super()._update(theta, grad, lr)


_OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "adam": Adam, "adamw": AdamW}


def make_optimizer(cfg: OptimizerConfig, n_params: int, dtype, decay_mask=None,
                   storage=None) -> Optimizer:
    """The optimizer ``cfg.name`` for a vector (or slice) of ``n_params`` entries.

    ``decay_mask``: adamw's weight-decay mask over the same entries (other optimizers
    ignore it, so callers may always pass it). ``storage(name)``: where to keep each state
    buffer (a zeroed array of ``n_params``); private arrays when None.
    """
    cls = _OPTIMIZERS.get(cfg.name)
    if cls is None:  # config validation prevents this
        raise ValueError(f"The 'optimizer.name' parameter must be one of {tuple(_OPTIMIZERS)}. "
                         f"Got {cfg.name!r} instead.")
    return cls(cfg, n_params, dtype, decay_mask=decay_mask, storage=storage)


def slice_state(state: dict | None, lo: int, hi: int) -> dict | None:
    """The part of a whole-vector optimizer state that an optimizer of [lo:hi) loads:
    per-parameter arrays sliced (copied), scalars such as ``step`` kept."""
    if not state:
        return state
    n = max(v.size for v in state.values())
    return {k: (v[lo:hi].copy() if v.ndim == 1 and v.size == n else v) for k, v in state.items()}


def _schedule(cfg: OptimizerConfig, step: int, epoch: int, total_steps: int) -> float:
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "invscaling":
        return cfg.lr / (1.0 + cfg.decay * step) ** cfg.power
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (epoch // cfg.step_epochs)
    if cfg.schedule == "cosine":
        progress = min(step, total_steps) / max(total_steps, 1)
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def learning_rate(cfg: OptimizerConfig, step: int, epoch: int, total_steps: int) -> float:
    """The rate for global ``step`` (0-based) in ``epoch`` (0-based).

    The schedule's rate, times min(1, (step + 1) / warmup_steps) when warmup_steps > 0: a
    linear ramp whose first step already moves (step 0 gets lr / warmup_steps).
    """
    rate = _schedule(cfg, step, epoch, total_steps)
    if cfg.warmup_steps > 0:
        rate *= min(1.0, (step + 1) / cfg.warmup_steps)
    return rate


def sq_norm(x: np.ndarray) -> float:
    """Sum of squares of ``x`` in float64: no overflow for any finite float32 gradient.

    NumPy's pairwise sum, not BLAS: its order depends only on the length, so every rank
    (whatever its BLAS or thread count) computes the same bits for the same vector.
    """
    return float(np.add.reduce(np.square(x, dtype=np.float64)))


def clip_factor(sq_norm_total: float, clip_norm: float) -> float:
    """The factor that scales a gradient of squared L2 norm ``sq_norm_total`` to norm at
    most ``clip_norm``: min(1, clip_norm / (norm + 1e-6)), as torch's clip_grad_norm_.

    clip_norm = 0 means off (1.0). A NaN or Inf squared norm gives NaN, so the scaled
    gradient fails the trainer's finiteness check instead of being silently zeroed.
    Sharded gradients: sum the squared norms of the pieces (e.g. with :func:`sq_norm`
    and an Allreduce), then every piece is multiplied by the one factor.
    """
    if not (isinstance(clip_norm, (int, float, np.floating, np.integer))
            and math.isfinite(clip_norm) and clip_norm >= 0):
        raise ValueError(
            f"The 'clip_norm' parameter must be a float in [0, inf). Got {clip_norm!r} instead."
        )
    if clip_norm == 0:
        return 1.0
    sq = float(sq_norm_total)
    if not math.isfinite(sq):
        return math.nan
    if sq < 0:
        raise ValueError(
            f"The 'sq_norm_total' parameter must be a sum of squares >= 0. Got {sq!r} instead."
        )
    return min(1.0, clip_norm / (math.sqrt(sq) + _CLIP_EPS))


def soft_threshold(theta: np.ndarray, threshold: float, mask: np.ndarray) -> None:
    """The L1 proximal step on the masked weights, in place: shrink toward 0 by ``threshold``.

    Applied after the optimizer step with threshold = lr * l1 (proximal SGD, ISTA for
    full-batch GD). Element-wise, so a parameter server applies it to its key range.
    """
    w = theta[mask]
    np.copyto(w, np.sign(w) * np.maximum(np.abs(w) - w.dtype.type(threshold), 0))
    theta[mask] = w

"""Optimizers and learning-rate schedules on flat parameter vectors.

They act on one contiguous vector (or a contiguous slice of it), so the same code
serves every rank in allreduce mode and a server's key range in parameter-server mode.
Semantics follow torch.optim.SGD (momentum buffer v = mu*v + g; Nesterov uses g + mu*v).
"""

from __future__ import annotations

import math

import numpy as np

from .config import OptimizerConfig


class SGD:
    """Plain, momentum or Nesterov SGD on a flat vector; state: the momentum buffer."""

    def __init__(self, cfg: OptimizerConfig, n_params: int, dtype: np.dtype):
        self.momentum = cfg.momentum
        self.nesterov = cfg.nesterov
        self.velocity = np.zeros(n_params, dtype=dtype) if cfg.momentum > 0 else None

    def step(self, theta: np.ndarray, grad: np.ndarray, lr: float) -> None:
        """Update ``theta`` in place from the (averaged, regularised) gradient."""
        if self.velocity is None:
            theta -= theta.dtype.type(lr) * grad
            return
        v = self.velocity
        v *= v.dtype.type(self.momentum)
        v += grad
        if self.nesterov:
            theta -= theta.dtype.type(lr) * (grad + v.dtype.type(self.momentum) * v)
        else:
            theta -= theta.dtype.type(lr) * v

    def state(self) -> dict[str, np.ndarray]:
        return {} if self.velocity is None else {"velocity": self.velocity}


def make_optimizer(cfg: OptimizerConfig, n_params: int, dtype: np.dtype) -> SGD:
    if cfg.name == "sgd":
        return SGD(cfg, n_params, dtype)
    raise ValueError(f"unknown optimizer {cfg.name!r}")  # config validation prevents this


def learning_rate(cfg: OptimizerConfig, step: int, epoch: int, total_steps: int) -> float:
    """The rate for global ``step`` (0-based) in ``epoch`` (0-based)."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "invscaling":
        return cfg.lr / (1.0 + cfg.decay * step) ** cfg.power
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (epoch // cfg.step_epochs)
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    raise ValueError(f"unknown schedule {cfg.schedule!r}")

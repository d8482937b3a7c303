"""Partition placement of CSR rows: each step's rows of this rank, from memory, and the
(key, value) layout of a sparse gradient that allreduce and ps modes exchange."""

from __future__ import annotations

import numpy as np

from mpisgd import kernels
from mpisgd.context import Context
from mpisgd.modes.common import StepPlan


def expand_keys(n_features: int, n_outputs: int, keys: np.ndarray) -> np.ndarray:
    """Feature ids -> the sorted flat indices of their weights and of the biases in
    theta's layout ([w, b], or softmax [W (C, d) class-major, b (C)])."""
    d, C = n_features, n_outputs
    flat = (np.arange(C, dtype=np.int64)[:, None] * d + keys[None, :]).ravel() if C > 1 \
        else keys
    return np.concatenate((flat, np.arange(C * d, C * d + C, dtype=np.int64)))


def flat_keys(model: str, n_features: int, g) -> tuple[np.ndarray, np.ndarray]:
    """A :class:`~mpisgd.kernels.sparse.SparseGrad` as (:func:`expand_keys` of its keys,
    their values)."""
    vals = g.grad_keys.T.ravel() if model == "softmax" else g.grad_keys
    return (expand_keys(n_features, g.grad_bias.size, g.keys),
            np.concatenate((vals, g.grad_bias)))


class SparseRowBatches:
    """Partition placement, CSR rows: the rank's gradient of each step's rows, as the
    touched keys and their values (kept in :attr:`last`)."""

    def __init__(self, ctx: Context, plan: StepPlan):
        self.ctx, self.plan = ctx, plan
        self.steps_per_epoch, self.total, self.batch = plan.steps_per_epoch, plan.total, plan.batch
        self.wait_s = 0.0
        self.trace = ctx.cfg.debug.trace_rows
        self.last: tuple[np.ndarray, np.ndarray] | None = None
        self._keys = None   # (step, its unique keys), found by keys_for for the pull

    def gradient(self, step: int, theta: np.ndarray, grad: np.ndarray):
        """(loss sum, rows, their global ids when traced); the gradient in :attr:`last`."""
        ctx = self.ctx
        idx = self.plan.rows_for(step)
        known = self._keys[1] if self._keys is not None and self._keys[0] == step else None
        g = kernels.sparse.loss_grad_theta(ctx.model, ctx.X, ctx.y, idx, theta, known)
        self.last = flat_keys(ctx.model, ctx.n_features, g)
        return g.loss, idx.size, (idx + ctx.row0 if self.trace else None)

    def keys_for(self, step: int) -> np.ndarray:
        """The flat parameter indices rows of ``step`` touch (a PS worker pulls them)."""
        ctx = self.ctx
        found = kernels.sparse.unique_keys(ctx.X.indptr, ctx.X.indices,
                                           self.plan.rows_for(step))
        self._keys = (step, found)   # the step's gradient reuses them
        keys = found.keys
        return expand_keys(ctx.n_features, ctx.n_classes if ctx.model == "softmax" else 1,
                           keys)

    def id_epochs(self, step: int) -> np.ndarray:
        """The epoch of each row id the last ``gradient`` returned."""
        return np.full(self.plan.rows_for(step).size, step // self.steps_per_epoch,
                       dtype=np.int64)

    def rows_per_epoch(self) -> int:
        """This rank's training rows (lost for the rest of the run if it dies)."""
        return int(self.plan.train_rows.size)

    def rows_missed(self, worker: int, first: int) -> int:
        return 0   # counted from rows_per_epoch (modes.ps.deaths)

    def requeue_dead(self, worker: int, applied: int, horizon: int) -> tuple[int, int]:
        """A dead worker's partition is its own: nothing to hand over."""
        return 0, 0

    def max_keys(self) -> int:
        """A bound on the flat indices one step of this rank touches: its most rows in a
        step times its densest row, per output, plus the biases."""
        ctx = self.ctx
        rows = min(self.batch, ctx.train_rows.size)
        nnz = int(np.diff(ctx.X.indptr).max()) if ctx.X.indptr.size > 1 else 0
        C = ctx.n_classes if ctx.model == "softmax" else 1
        return min(ctx.n_params, rows * nnz * C + C)

    def report(self) -> dict:
        return {}

    def finish_reads(self) -> None:
        """Nothing in flight."""

    def close(self) -> None:
        """Nothing to release."""

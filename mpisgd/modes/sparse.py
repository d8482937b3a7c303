"""Sparse models in allreduce mode: each step touches the keys of its minibatch only.

Every rank holds the whole parameter vector (the dense models' layout, so model.h5,
checkpoints, eval and predict are the same files), computes the gradient of the keys its
rows of the global minibatch touch (:mod:`mpisgd.kernels.sparse`), and the ranks sum
them as (key, value) pairs or as one dense Allreduce, whichever moves fewer bytes
(:mod:`mpisgd.comm.sparse_reduce`). Every rank then applies the same lazy optimizer step
(:mod:`mpisgd.optim_sparse`) to the summed keys: the step's cost follows the keys, not the
width. The step loop, epochs, checkpoints and signals are allreduce mode's
(:class:`~mpisgd.modes.runner.Runner`); the loss, rows and votes ride on the first,
small allgather of every step.

Regularisation is lazy, as in every sparse trainer: the L2 term and the L1 shrinkage
apply to the weights a step touches (docs/sparse.md). ``comm.compression`` compresses
each rank's values, with lazy error feedback (:mod:`mpisgd.comm.sparse_compress`).
"""

from __future__ import annotations

import time

import numpy as np

from mpisgd.comm.sparse_compress import SparseCompression
from mpisgd.comm.sparse_reduce import SparseReducer
from mpisgd.comm.watchdog import StepWatchdog
from mpisgd.context import Context
from mpisgd.modes.allreduce import load_residual, split_residuals
from mpisgd.modes.common import check_finite, make_plan
from mpisgd.modes.runner import LOSS, ROWS, TAIL, Exchanged, Runner
from mpisgd.modes.sparse_chunks import make_sparse_batches
from mpisgd.optim import clip_factor, learning_rate, sq_norm
from mpisgd.optim_sparse import make_sparse_optimizer
from mpisgd.report.memory import node_memory


class SparseParams:
    """The replicated parameters and the lazy optimizer over all of them."""

    def __init__(self, ctx: Context, theta: np.ndarray, opt_state: dict | None):
        self.ctx, self.theta = ctx, theta
        self.optimizer = make_sparse_optimizer(ctx.cfg.optimizer, theta.size, theta.dtype)
        if opt_state:
            self.optimizer.load_state(opt_state)
        self.shared = False

    def update(self, keys: np.ndarray, grad: np.ndarray, lr: float, l1: float) -> None:
        """The optimizer step on ``keys`` (the summed gradient's), then the L1 shrinkage of
        the touched weights (FTRL has its own L1)."""
        self.optimizer.step(self.theta, keys, grad, lr)
        if l1 and keys.size:
            w = self.theta[keys]
            mask = self.ctx.l2_mask[keys]
            shrunk = np.sign(w) * np.maximum(np.abs(w) - w.dtype.type(lr * l1), 0)
            self.theta[keys] = np.where(mask, shrunk, w)

    def state(self) -> dict[str, np.ndarray]:
        return self.optimizer.state()

    def held_bytes(self) -> dict[str, int]:
        return {"params": self.theta.nbytes, "optimizer_state": self.optimizer.held_bytes()}


class SparseSyncRunner(Runner):
    """Synchronous SGD over sparse gradients: sum the ranks' pairs, update their keys."""

    def __init__(self, ctx: Context, params: SparseParams, buf: np.ndarray,
                 reduce: SparseReducer, plan, dog: StepWatchdog,
                 start_step: int):
        super().__init__(ctx, params, buf, reduce, plan, dog, start_step)
        # The gradient travels as pairs, not here; the tail is summed in place.
        self.grad, self.tail = self.reduced, self.sums = buf[:0], buf
        self.keys_total = 0   # summed keys over the steps, for the summary

    def _gradient(self, step: int, epoch: int) -> tuple[float, int, float]:
        """The rank's sparse gradient; the failure hooks act on its values."""
        self.dog.computing(step)
        self.hooks.before_gradient(step)
        loss, rows, ids = self.plan.gradient(step, self.theta, self.grad)
        self.hooks.after_gradient(step, self.plan.last[1])
        if self.trace is not None:
            self.trace.setdefault(epoch, []).append(ids)
        return loss, rows, 0.0

    def advance(self, step: int, epoch: int, loss: float, rows: int) -> Exchanged:
        cfg, tail = self.cfg, self.tail
        self.vote(loss, rows)
        keys, vals = self.plan.last
        t1 = time.perf_counter()
        self.dog.waiting(step, "the sparse gradient exchange")
        keys, vals, tail[:] = self.reduce(keys, vals, tail, step)
        self.dog.idle()
        t2 = time.perf_counter()
        count = float(tail[ROWS])
        lr = learning_rate(cfg.optimizer, step, epoch, self.total)
        mean = float(tail[LOSS]) / count if count else 0.0
        self.keys_total += keys.size
        if count:
            vals *= vals.dtype.type(1.0) / vals.dtype.type(count)
            l2 = cfg.model.l2
            if l2:
                mask = self.ctx.l2_mask[keys]
                vals[mask] += vals.dtype.type(l2) * self.theta[keys[mask]]
            if cfg.optimizer.clip_norm:
                vals *= vals.dtype.type(clip_factor(sq_norm(vals), cfg.optimizer.clip_norm))
            check_finite(mean, vals, step, lr)
        self.params.update(keys, vals, lr, cfg.model.l1 if count else 0.0)
        return Exchanged(t1, t2, mean, lr, count)

    def traffic(self, step: int) -> tuple[int, int]:
        return 1, self.reduce.sent   # the bytes of all steps: their sizes differ

    def strategy_stats(self, sent: int) -> dict:
        steps = max(1, sum(self.reduce.steps.values()))
        out = {"sparse": {"exchange": self.reduce.method, "steps": dict(self.reduce.steps),
                          "keys_per_step": self.keys_total / steps,
                          "bytes_per_step_sent": sent / steps,
                          "bytes_per_step_dense": self.reduce.dense_bytes()}}
        comm = self.cfg.comm
        if comm.compression != "none":
            out["compression"] = {"scheme": comm.compression,
                                  "error_feedback": comm.error_feedback,
                                  "bytes_per_step_sent": sent / steps}
        return out


def fit(ctx: Context, theta: np.ndarray, start_step: int = 0,
        opt_state: dict | None = None) -> dict:
    """Collective over the world: train the sparse model ``theta`` in place (see
    :func:`mpisgd.modes.allreduce.fit`)."""
    buf = np.zeros(TAIL, dtype=np.float64)   # the runner's tail; no dense gradient buffer
    opt_state, residuals = split_residuals(opt_state)
    comm = ctx.cfg.comm
    compression = None
    if comm.compression != "none":
        compression = SparseCompression(comm.compression, ctx.n_params, ctx.dtype,
                                        comm.topk_ratio, ctx.cfg.train.seed, ctx.topo.rank,
                                        comm.error_feedback)
    reduce = SparseReducer(ctx.topo.world, ctx.n_params, ctx.dtype, comm.sparse, TAIL,
                           compression)
    if residuals is not None and reduce.residual is not None:
        load_residual(reduce.residual, residuals, ctx.topo)
    params = SparseParams(ctx, theta, opt_state)
    buffers = reduce.dense_bytes() + (reduce.residual.nbytes if reduce.residual is not None
                                      else 0)
    memory = node_memory(ctx.topo, {**params.held_bytes(), "buffers": buffers})
    plan = make_sparse_batches(ctx, make_plan(ctx))
    with StepWatchdog(ctx.cfg.train.step_timeout) as dog:
        stats = _run(ctx, params, buf, reduce, plan, dog, start_step)
    stats["allreduce"] = f"sparse-{reduce.method}"
    stats["params_shared"] = False
    if memory is not None:
        stats["memory"] = memory
    return stats


def _run(ctx, params, buf, reduce, plan, dog, start_step) -> dict:
    runner = SparseSyncRunner(ctx, params, buf, reduce, plan, dog, start_step)
    stats = runner.run()
    ctx.data_report = plan.report()
    return stats

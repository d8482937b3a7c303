"""Allreduce mode: synchronous data parallelism (and ``local``, its one-rank case).

Every rank holds the parameters, computes the gradient sum of its rows of each global
minibatch, and one in-place buffer Allreduce sums [gradient, loss, row count] across
ranks; every rank then applies the same update. The hot loop moves buffers only: no
pickling, no allocation per step beyond the kernel's block buffers.

``train.sync_every > 1`` trains with local SGD instead (:mod:`mpisgd.modes.localsgd`);
both strategies share the step loop of :mod:`mpisgd.modes.runner`.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import numpy as np

from mpisgd.comm import Topology
from mpisgd.comm.compressed_reduce import CompressedAllreduce
from mpisgd.comm.reduce import Reducer, make_reducer
from mpisgd.comm.watchdog import StepWatchdog
from mpisgd.context import Context
from mpisgd.modes.batches import Batches, make_batches
from mpisgd.modes.common import diverged, finish_gradient, gradient_codec, make_plan
from mpisgd.modes.localsgd import Averager, LocalSGDRunner
from mpisgd.modes.nodeparams import NodeParams
from mpisgd.modes.runner import LOSS, ROWS, TAIL, Exchanged, Runner
from mpisgd.optim import learning_rate
from mpisgd.report.memory import node_memory


def fit(ctx: Context, theta: np.ndarray, start_step: int = 0,
        opt_state: dict | None = None) -> dict:
    """Collective over the world: train ``theta`` in place from ``start_step``.

    Returns run statistics. Raises Interrupted (agreed) after writing a checkpoint when
    any rank received SIGTERM/SIGUSR1.
    """
    opt_state, residuals = split_residuals(opt_state)
    # [gradient sum, loss sum, rows, checkpoint request, stop request]: requests ride on
    # the gradient's allreduce, so every rank learns of them at the same step for free.
    buf = np.zeros(ctx.n_params + TAIL, dtype=ctx.dtype)
    local_sgd = ctx.cfg.train.sync_every > 1
    with _reducer(ctx, buf, direct=not local_sgd) as reduce:
        # A node that reduces in shared memory also keeps the parameters there, once
        # (not with local SGD: each rank's parameters drift apart between averagings).
        shared = reduce.window is not None and not local_sgd
        with NodeParams(ctx, theta, shared, opt_state) as params:
            if residuals is not None and reduce.residual is not None:
                load_residual(reduce.residual, residuals, ctx.topo)
            with Averager(ctx, params) if local_sgd else nullcontext() as averager:
                held = params.held_bytes()
                # A direct reducer's rows replace buf, whose zero pages were never touched.
                held["buffers"] = (0 if reduce.direct else buf.nbytes) + reduce.window_bytes + (
                    averager.buf.nbytes if averager else 0)
                memory = node_memory(ctx.topo, held)
                stats = _loop(ctx, params, buf, reduce, start_step, averager)
    stats["allreduce"] = reduce.method
    stats["params_shared"] = params.shared
    if memory is not None:
        stats["memory"] = memory
    return stats


def _reducer(ctx: Context, buf: np.ndarray, direct: bool) -> Reducer:
    """Collective: the gradient reducer of the job: compressed, flat or hierarchical
    (``direct``: kernels write into its window, see HierarchicalAllreduce)."""
    comm = ctx.cfg.comm
    codec = gradient_codec(ctx, ctx.n_params)
    if codec is None:
        return make_reducer(comm.allreduce, ctx.topo, buf, direct)
    return CompressedAllreduce(ctx.topo.world, buf, ctx.n_params, codec, comm.error_feedback)


def split_residuals(state: dict | None) -> tuple[dict | None, np.ndarray | None]:
    """(the optimizer's part of a checkpoint's state, the ranks' error-feedback residuals)."""
    if not state or "ef_residual" not in state:
        return state, None
    rest = {k: v for k, v in state.items() if k != "ef_residual"}
    return rest, state["ef_residual"]


def load_residual(residual: np.ndarray, saved: np.ndarray, topo: Topology) -> None:
    """This rank's residual from a checkpoint's (one row per rank of the saving run). At
    another world size rows cannot be matched to ranks; rank 0 takes their sum, so the
    gradient mass not yet sent is kept, only its split between ranks changes."""
    if saved.ndim != 2 or saved.shape[1] != residual.size:
        return
    if saved.shape[0] == topo.size:
        residual[:] = saved[topo.rank]
    elif topo.rank == 0:
        residual[:] = saved.sum(axis=0)


def _loop(ctx: Context, params: NodeParams, buf: np.ndarray, reduce: Reducer,
          start_step: int, averager: Averager | None) -> dict:
    """The training loop over ``params`` (see :func:`fit`), with the job's batches and
    the strategy's runner."""
    plan = make_batches(ctx, make_plan(ctx))
    try:
        with StepWatchdog(ctx.cfg.train.step_timeout) as dog:
            if averager is None:
                runner: Runner = SyncRunner(ctx, params, buf, reduce, plan, dog, start_step)
            else:
                runner = LocalSGDRunner(ctx, params, buf, reduce, plan, dog, start_step,
                                        averager)
            stats = runner.run()
    except Exception as exc:
        # close() is collective (the balanced counter): only when every rank raises.
        if getattr(exc, "agreed", False):
            plan.close()
        raise
    plan.close()
    ctx.data_report = plan.report()
    return stats


class SyncRunner(Runner):
    """Synchronous SGD: every step reduces the gradient (with the tail) across ranks, and
    every rank applies the same update."""

    def __init__(self, ctx: Context, params: NodeParams, buf: np.ndarray, reduce: Reducer,
                 plan: Batches, dog: StepWatchdog, start_step: int):
        super().__init__(ctx, params, buf, reduce, plan, dog, start_step)
        # A barrier before each reduction splits waiting for the slowest rank from the
        # collective itself; it costs a barrier per step, so for profiling only.
        self.measure_wait = self.cfg.train.measure_wait and self.ctx.topo.world.Get_size() > 1
        # A direct reducer leaves the sum in the node's window. With the parameters there
        # too, each rank finishes and checks only its own slice of it, in place (the
        # slices are disjoint and nobody else reads them before the next sum). Otherwise
        # (private parameters, or clipping, which needs the whole finished vector) each
        # rank finishes a private copy.
        self.sliced = reduce.direct and params.shared and not self.cfg.optimizer.clip_norm
        self.whole = (np.empty_like(self.reduced) if reduce.direct and not self.sliced
                      else self.reduced)

    def advance(self, step: int, epoch: int, loss: float, rows: int) -> Exchanged:
        cfg = self.cfg
        self.vote(loss, rows)
        if self.measure_wait:
            t_wait = time.perf_counter()
            self.ctx.topo.world.Barrier()
            self.timers["wait"] += time.perf_counter() - t_wait
        t1 = time.perf_counter()
        self.dog.waiting(step, "the gradient allreduce")
        self.reduce(step)
        self.dog.idle()
        t2 = time.perf_counter()
        sums = self.sums
        count = float(sums[ROWS])
        lr = learning_rate(cfg.optimizer, step, epoch, self.total)
        # No rows at all: every chunk of this step was skipped (data.on_read_error =
        # "skip"). The same on every rank: all skip the update together.
        mean = float(sums[LOSS]) / count if count else 0.0
        if count and self.sliced:
            self._update_slice(count, mean, step, lr)
        elif count:
            grad = self.whole
            if grad is not self.reduced:
                np.copyto(grad, self.reduced)
            finite = self.finish(grad, count)   # the reduced gradient is the same everywhere
            # The reduced buffer is the same on every rank and NaN/Inf survive any
            # summation order, so every rank raises here together: no hang.
            if not (finite and math.isfinite(mean)):
                raise diverged(step, lr)
            if self.params.shared and cfg.model.l2:
                # finish() read every slice of the node's parameters (the L2 term): all
                # ranks must be done with that before any rank updates its slice.
                self.params.sync()
            self.params.update(grad, lr, cfg.model.l1)
        return Exchanged(t1, t2, mean, lr, count)

    def _update_slice(self, count: float, mean: float, step: int, lr: float) -> None:
        """The update from the node-shared sum: this rank finishes, checks and applies its
        own slice; the node agrees on finiteness in the update's sync, and every rank
        raises together when any slice had a NaN or Inf (the same sum on every node, so
        the same answer on every node)."""
        lo, hi = self.params.lo, self.params.hi
        if not math.isfinite(mean):
            raise diverged(step, lr)
        ok = finish_gradient(self.reduced[lo:hi], count, self.theta[lo:hi],
                             self.cfg.model.l2, self.ctx.l2_mask[lo:hi])
        if not self.params.update(self.reduced, lr, self.cfg.model.l1, ok):
            raise diverged(step, lr)

    def traffic(self, step: int) -> tuple[int, int]:
        return step - self.start_step, self.reduce.sent_bytes

    def strategy_stats(self, sent: int) -> dict:
        comm = self.cfg.comm
        if comm.compression == "none":
            return {}
        dense = self.buf.nbytes
        return {"compression": {"scheme": comm.compression, "bytes_per_step_dense": dense,
                                "bytes_per_step_sent": sent, "ratio": dense / sent,
                                "error_feedback": comm.error_feedback}}

"""Local SGD (periodic model averaging) for allreduce mode: ``train.sync_every = k``.

Each rank takes k optimizer steps on its own rows of the global minibatches (its share,
averaged over its rows), then one reduction averages the parameters *and* the optimizer
state (momentum, AdaGrad's sums, Adam's moments) across ranks. Averaging the state too
means every period starts from one identical model and optimizer on every rank, so a
checkpoint (taken only at averaging points) is the same whoever writes it, and resume is
exact. Keeping momentum local instead (as some local-SGD papers do) would leave the ranks
with different states that no single checkpoint could hold.

Averaging also happens at every epoch end and at the last step, so held-out metrics and
the saved model are always of the averaged parameters. k = 1 is not served here: the
gradient path of :mod:`allreduce` is plain synchronous SGD.
"""

from __future__ import annotations

import time

import numpy as np

from mpisgd.comm.reduce import Reducer, make_reducer
from mpisgd.comm.watchdog import StepWatchdog
from mpisgd.context import Context
from mpisgd.modes.batches import Batches
from mpisgd.modes.common import check_finite
from mpisgd.modes.nodeparams import NodeParams
from mpisgd.modes.runner import LOSS, ROWS, Exchanged, Runner
from mpisgd.optim import learning_rate


class Averager:
    """Collective over the world: average ``params``' vector and optimizer state in place.

    One buffer of [theta, state buffers..., tail]: the tail (the period's loss sum, rows
    and the two votes) is summed, the rest averaged, in one reduction.
    """

    def __init__(self, ctx: Context, params: NodeParams):
        self.k = ctx.cfg.train.sync_every
        self.size = ctx.topo.size
        self.views = [params.theta, *params.optimizer.buffers().values()]
        n = sum(v.size for v in self.views)
        self.buf = np.zeros(n + 4, dtype=params.theta.dtype)
        self.reduce = make_reducer(ctx.cfg.comm.allreduce, ctx.topo, self.buf)
        self.count = 0   # averagings done

    def due(self, step: int, steps_per_epoch: int, total: int) -> bool:
        """Average after global step ``step`` (0-based)?"""
        done = step + 1
        return done % self.k == 0 or done % steps_per_epoch == 0 or done == total

    def __call__(self, tail: np.ndarray) -> None:
        """Average the vectors; sum ``tail`` (4 entries) across ranks, in place."""
        at = 0
        for v in self.views:
            self.buf[at:at + v.size] = v
            at += v.size
        self.buf[at:] = tail
        self.reduce()
        inverse = self.buf.dtype.type(1.0 / self.size)
        at = 0
        for v in self.views:
            np.multiply(self.buf[at:at + v.size], inverse, out=v)
            at += v.size
        tail[:] = self.buf[at:]
        self.count += 1

    def __enter__(self) -> "Averager":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.reduce.__exit__(exc_type, exc, tb)   # frees unless one rank alone is raising


class LocalSGDRunner(Runner):
    """Local SGD: each step updates this rank's parameters from its own rows; every k
    steps (and at every epoch end and the last step) ``averager`` averages parameters and
    optimizer state, with the tail summed alongside. The shared loop sees an exchange only
    at those averagings: losses, logs, epoch ends and checkpoints happen there.
    """

    def __init__(self, ctx: Context, params: NodeParams, buf: np.ndarray, reduce: Reducer,
                 plan: Batches, dog: StepWatchdog, start_step: int, averager: Averager):
        super().__init__(ctx, params, buf, reduce, plan, dog, start_step)
        self.averager = averager
        self.period_loss = self.period_rows = 0.0   # sums since the last averaging

    def advance(self, step: int, epoch: int, loss: float, rows: int) -> Exchanged:
        cfg = self.cfg
        lr = learning_rate(cfg.optimizer, step, epoch, self.total)
        if rows:
            self.finish(self.grad, rows)   # this rank's rows alone
            self.params.update(self.grad, lr, cfg.model.l1)
        self.period_loss += loss
        self.period_rows += rows
        t1 = time.perf_counter()
        if not self.averager.due(step, self.spe, self.total):
            return Exchanged(t1)
        self.vote(self.period_loss, self.period_rows)
        self.dog.waiting(step, "the parameter averaging")
        self.averager(self.tail)
        self.dog.idle()
        t2 = time.perf_counter()
        count = float(self.tail[ROWS])
        mean = float(self.tail[LOSS]) / count if count else 0.0
        # Averaged parameters are the same on every rank, so every rank raises together.
        check_finite(mean, self.theta, step, lr)
        self.period_loss = self.period_rows = 0.0
        return Exchanged(t1, t2, mean, lr, count)

    def traffic(self, step: int) -> tuple[int, int]:
        return self.averager.count, self.averager.reduce.sent_bytes

    def strategy_stats(self, sent: int) -> dict:
        return {"local_sgd": {"sync_every": self.cfg.train.sync_every,
                              "averagings": self.averager.count}}

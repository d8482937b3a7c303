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

import numpy as np

from mpisgd.comm.reduce import make_reducer


class Averager:
    """Collective over the world: average ``params``' vector and optimizer state in place.

    One buffer of [theta, state buffers..., tail]: the tail (the period's loss sum, rows
    and the two votes) is summed, the rest averaged, in one reduction.
    """

    def __init__(self, ctx, params):
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

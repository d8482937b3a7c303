"""Allreduce mode's parameters and optimizer state, once per node when the node shares memory.

With the hierarchical reducer every rank of a node ends a step holding the same reduced
gradient, so keeping a private copy of the parameters (and of Adam's two moment vectors)
on each of a node's k ranks stores the same numbers k times and repeats the same update
k times. Instead the parameters and every optimizer state vector live in node-shared
windows (:class:`~mpisgd.comm.shm.SharedArray`); local rank r updates only its column
slice r (the reducer's cache-line-aligned slices, so two ranks never write one cache line),
and one node sync publishes the update before anyone reads the parameters again.

The optimizer built on a slice computes bitwise what the whole-vector optimizer computes
there (see ``optim``), so sharing changes memory and work, never the numbers.

Without shared memory (flat reducer, one rank per node, ``MPISGD_NO_SHM``) the same object
wraps the private vector, so the training loop has one code path.
"""

from __future__ import annotations

import numpy as np

from mpisgd.comm.reduce import column_slice
from mpisgd.comm.shm import SharedArray
from mpisgd.context import Context
from mpisgd.optim import make_optimizer, slice_state, soft_threshold


class NodeParams:
    """Collective over the node: ``theta`` (the parameters to train, read by every rank) and
    ``update`` (this rank's part of the optimizer step), shared per node when possible.

    ``theta0`` is the starting vector (the same on every rank); ``opt_state`` a whole-vector
    optimizer state to resume from. Call :meth:`finish` (collective over the node) at the end:
    it copies the final parameters into ``theta0`` and frees the windows.
    """

    def __init__(self, ctx: Context, theta0: np.ndarray, shared: bool,
                 opt_state: dict | None):
        self.ctx, self.theta0 = ctx, theta0
        self.node = ctx.topo.node
        n, dtype = theta0.size, theta0.dtype
        self._windows: list[SharedArray] = []
        self._flags: SharedArray | None = None
        self.shared = shared and ctx.topo.local_size > 1
        if self.shared:
            win = self._window(n, dtype)
            if not win.shared:   # the allocation fell back: private copies, one path
                self.free()
                self.shared = False
        if self.shared:
            self.lo, self.hi = column_slice(n, ctx.topo.local_size, ctx.topo.local_rank,
                                            dtype.itemsize)
            # A rank's "my slice was not finite" flag, a cache line each.
            self._flags = SharedArray(self.node, (ctx.topo.local_size, 8), np.int64)
            self.theta = self._windows[0].array
            if ctx.topo.local_rank == 0:
                np.copyto(self.theta, theta0)
            storage = lambda name: self._window(n, dtype).array[self.lo:self.hi]  # noqa: E731
        else:
            self.lo, self.hi = 0, n
            self.theta = theta0
            storage = None
        self.optimizer = make_optimizer(ctx.cfg.optimizer, self.hi - self.lo, dtype,
                                        decay_mask=ctx.l2_mask[self.lo:self.hi],
                                        storage=storage)
        if opt_state:
            self.optimizer.load_state(slice_state(opt_state, self.lo, self.hi))
        self.sync()

    def _window(self, n: int, dtype) -> SharedArray:
        win = SharedArray(self.node, n, dtype)
        self._windows.append(win)
        return win

    def update(self, grad: np.ndarray, lr: float, l1: float, ok: bool = True) -> bool:
        """This rank's slice of the step from the whole reduced ``grad``; then a node sync,
        after which every rank reads the new parameters.

        ``ok`` False: this rank found a NaN or Inf in its slice of ``grad`` and skips its
        part. Returns whether every rank of the node was ok (agreed in the same sync, so
        every rank returns the same).
        """
        lo, hi = self.lo, self.hi
        if ok:
            self.optimizer.step(self.theta[lo:hi], grad[lo:hi], lr)
            if l1:
                soft_threshold(self.theta[lo:hi], lr * l1, self.ctx.l2_mask[lo:hi])
        if not self.shared:
            return ok
        flags = self._flags.array
        flags[self.ctx.topo.local_rank, 0] = not ok
        self.sync()
        return not flags[:, 0].any()

    def sync(self) -> None:
        if self.shared:
            self._windows[0].sync()

    def state(self) -> dict[str, np.ndarray]:
        """The whole-vector optimizer state (a checkpoint's), read after a sync."""
        mine = self.optimizer.state()
        if not self.shared:
            return mine
        # Buffers were created in the same order as the windows after the first.
        names = [k for k in mine if k != "step"]
        full = {k: w.array.copy() for k, w in zip(names, self._windows[1:])}
        return {"step": mine["step"], **full}

    def held_bytes(self) -> dict[str, int]:
        """Bytes of parameters and optimizer state this rank allocated (window or private)."""
        if self.shared:
            params = self._windows[0].window_bytes
            state = sum(w.window_bytes for w in self._windows[1:])
        else:
            params = self.theta.nbytes
            state = sum(v.nbytes for k, v in self.optimizer.state().items() if k != "step")
        return {"params": params, "optimizer_state": state}

    def finish(self) -> None:
        """Collective over the node: the final parameters into ``theta0``; free the windows."""
        if self.shared:
            np.copyto(self.theta0, self.theta)
        self.free()

    def free(self) -> None:
        for win in self._windows:
            win.free()
        self._windows = []
        if self._flags is not None:
            self._flags.free()
            self._flags = None

    def __enter__(self) -> "NodeParams":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Freeing is collective: only when every rank leaves together (see SharedArray).
        if exc is None or getattr(exc, "agreed", False):
            if exc is None:
                self.finish()
            else:
                self.free()

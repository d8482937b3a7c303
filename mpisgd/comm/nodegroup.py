"""Node-local aggregation for parameter-server workers: the workers of one node sum their
gradients in node-shared memory, and one of them (the leader) talks to the servers."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from mpisgd.comm.shm import SharedArray, sync_arrays


class NodeGroup:
    """Collective over ``comm`` (the worker ranks of one node): node-local aggregation.

    Windows: ``grads`` (a row per member), ``theta`` (the pulled parameters, once per
    node) and ``info`` (a row per member: loss, rows, signal; and a last row the leader
    fills: version, stop, interrupted). Each step takes two node syncs: members' rows
    are complete before the leader sums them; the leader's pull is complete before
    anyone reads the parameters or the verdict.
    """

    def __init__(self, comm: MPI.Intracomm, theta0: np.ndarray):
        self.comm, self.size, self.rank = comm, comm.Get_size(), comm.Get_rank()
        self.leader = self.rank == 0
        n = theta0.size
        self.grads = SharedArray(comm, (self.size, n), theta0.dtype)
        self.theta = SharedArray(comm, n, theta0.dtype)
        self.info = SharedArray(comm, (self.size + 1, 4), np.float64)
        self._windows = (self.grads, self.theta, self.info)
        self.shared = all(w.shared for w in self._windows)
        if self.leader:
            np.copyto(self.theta.array, theta0)
        self.sync()

    def sync(self) -> None:
        sync_arrays(self.comm, self._windows)

    def step(self, mine: tuple, exchange, acc: np.ndarray | None) -> tuple[int, bool, bool]:
        """One step after this member wrote its gradient row: publish (loss, rows, signal),
        the leader sums the rows into ``acc`` and calls ``exchange(loss, rows, signal)``
        (which writes the pulled parameters into ``theta``), everyone reads the verdict."""
        info, k = self.info.array, self.size
        info[self.rank, :3] = mine
        self.sync()
        if self.leader:
            rows = self.grads.array
            np.copyto(acc, rows[0])
            for r in range(1, k):   # group-rank order: the same sum on every run
                acc += rows[r]
            loss, count = float(info[:k, 0].sum()), int(info[:k, 1].sum())
            version, stop, interrupted = exchange(loss, count, bool(info[:k, 2].any()))
            info[k, :3] = (version, stop, interrupted)
        self.sync()
        version, stop, interrupted = info[k, :3]
        return int(version), bool(stop), bool(interrupted)

    def held_bytes(self) -> dict[str, int]:
        return {"params": self.theta.window_bytes,
                "buffers": self.grads.window_bytes + self.info.window_bytes}

    def free(self) -> None:
        """Collective over the group: free the windows and the communicator."""
        for w in self._windows:
            w.free()
        self.comm.Free()

"""Balanced assignment's shared counters: which worker computes which chunk of a step.

One MPI window on rank 0 holds a counter per global step; a worker takes the next chunk
of a step with an atomic fetch-and-add, so the chunks of a step go first come, first
served. When the job goes on through a worker's death (``tracked``), the window also
records who took each chunk, and holds a queue of *leftover* chunks: server rank 0 puts
there the chunks a dead worker took but whose gradient was never applied, and every
worker takes leftovers before the chunks of its step, so each row of an epoch is still
used once.

Window layout (int64 slots), ``tracked`` only past the counters:
``[counter per step | owner per step and chunk slot (worker + 1; 0: not recorded)
| leftovers queued, leftovers taken | leftover codes | their takers | the step taken in]``.
A leftover's code is ``epoch * n_chunks + chunk``: the epoch whose rows it is.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

_I64 = MPI.INT64_T
# A taker that died between the fetch-and-add and recording itself cannot be told from a
# live worker in the same microseconds: unrecorded slots older than this are the dead's.
RECORD_GRACE_S = 0.2


class BalancedCounter:
    """Collective over ``comm`` (creation and :meth:`free`)."""

    def __init__(self, comm: MPI.Intracomm, steps: int, per_step: int = 0,
                 n_workers: int = 0, tracked: bool = False):
        self.steps, self.per_step, self.tracked = max(steps, 1), per_step, tracked
        self.cap = 4 * per_step * n_workers + 64 if tracked else 0
        self.owner0 = self.steps
        self.left0 = self.owner0 + (self.steps * per_step if tracked else 0)
        self.codes0 = self.left0 + 2
        self.takers0 = self.codes0 + self.cap
        self.at0 = self.takers0 + self.cap
        n = self.at0 + self.cap if tracked else self.steps
        mine = n if comm.Get_rank() == 0 else 0
        self.win = MPI.Win.Allocate(mine * 8, 8, comm=comm)
        if comm.Get_rank() == 0:
            np.frombuffer(self.win.tomemory(), dtype=np.int64)[:] = 0
        comm.Barrier()
        self.win.Lock_all()
        self._one = np.ones(1, dtype=np.int64)
        self._got = np.zeros(1, dtype=np.int64)
        self._val = np.zeros(1, dtype=np.int64)

    # -- atomic one-slot operations on rank 0's window -------------------------------
    def _op(self, slot: int, value: int, op) -> int:
        self._val[0] = value
        self.win.Fetch_and_op(self._val, self._got, 0, slot, op)
        self.win.Flush(0)
        return int(self._got[0])

    def _read(self, slot: int, count: int) -> np.ndarray:
        out = np.zeros(count, dtype=np.int64)
        if count:
            self.win.Get_accumulate(np.zeros(count, dtype=np.int64), out, 0,
                                    target=(slot, count, _I64), op=MPI.NO_OP)
            self.win.Flush(0)
        return out

    # -- workers --------------------------------------------------------------------
    def claim(self, step: int, worker: int = -1) -> int:
        """The next unclaimed chunk index of ``step`` (may be past its last chunk)."""
        self.win.Fetch_and_op(self._one, self._got, 0, step, MPI.SUM)
        self.win.Flush(0)
        j = int(self._got[0])
        if self.tracked and j < self.per_step:
            self._op(self.owner0 + step * self.per_step + j, worker + 1, MPI.REPLACE)
        return j

    def claim_leftover(self, step: int, worker: int) -> int | None:
        """A leftover chunk's code, taken by ``worker`` in ``step``, or None."""
        if not self.tracked:
            return None
        while True:
            queued, taken = self._read(self.left0, 2)
            if taken >= queued:
                return None
            self._val[0] = taken + 1
            self.win.Compare_and_swap(self._val, np.array([taken], dtype=np.int64), self._got,
                                      0, self.left0 + 1)
            self.win.Flush(0)
            if int(self._got[0]) == taken:   # this worker took entry ``taken``
                self._op(self.takers0 + taken, worker + 1, MPI.REPLACE)
                self._op(self.at0 + taken, step, MPI.REPLACE)
                return int(self._read(self.codes0 + taken, 1)[0])

    # -- server rank 0 ----------------------------------------------------------------
    def requeue_dead(self, worker: int, applied: int, horizon: int, step_set,
                     steps_per_epoch: int, n_chunks: int) -> tuple[int, int]:
        """``worker`` died: queue every chunk it took after step ``applied`` (the last
        of its steps whose gradient was applied) up to ``horizon``; returns (chunks
        queued, chunks that did not fit in the queue)."""
        time.sleep(RECORD_GRACE_S)
        codes = []
        for s in range(max(applied + 1, 0), min(horizon, self.steps)):
            taken = min(int(self._read(s, 1)[0]), self.per_step)
            owners = self._read(self.owner0 + s * self.per_step, taken)
            chunks = step_set(s)
            epoch = s // steps_per_epoch
            codes += [epoch * n_chunks + int(chunks[j]) for j in range(min(taken, chunks.size))
                      if owners[j] in (0, worker + 1)]
        queued, taken = self._read(self.left0, 2)
        takers = self._read(self.takers0, int(taken))
        at = self._read(self.at0, int(taken))
        old = self._read(self.codes0, int(taken))
        codes += [int(old[j]) for j in range(int(taken))
                  if takers[j] in (0, worker + 1) and at[j] > applied]
        room = self.cap - int(queued)
        for k, code in enumerate(codes[:room]):
            self._op(self.codes0 + int(queued) + k, code, MPI.REPLACE)
        self._op(self.left0, min(len(codes), room), MPI.SUM)   # published after the codes
        return min(len(codes), room), max(0, len(codes) - room)

    def unused_leftovers(self) -> int:
        """Leftovers queued that no worker took (the run ended first)."""
        if not self.tracked:
            return 0
        queued, taken = self._read(self.left0, 2)
        return int(queued - taken)

    def free(self) -> None:
        self.win.Unlock_all()
        self.win.Free()

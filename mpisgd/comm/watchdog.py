"""The step watchdog: a rank that stalls ends the whole job, naming itself.

A rank stuck in a kernel, a hung read or an endless sleep would otherwise hold every
other rank in the next collective until the allocation runs out (the failure users of
distributed trainers report most). A daemon thread watches what the training loop says
it is doing:

- ``computing(step)``: reading rows and computing this rank's gradient. Longer than
  ``train.step_timeout`` seconds: this rank is the straggler, so it aborts the job with a
  message naming itself and the step.
- ``waiting(step, what)``: inside a collective (or a push/pull) for the others. A rank
  waits at most as long as the slowest rank computes, so the straggler's own watchdog
  fires first and names the right rank; a waiter gives up only after ``2 x timeout + 5 s``
  (the straggler is dead, deadlocked inside MPI, or its watchdog could not run).
- ``idle()``: evaluation, checkpoints and logging between steps are not watched.

The thread only reads two Python attributes (set atomically under the GIL) and calls
MPI only to abort, which MPI allows from any thread at MPI_THREAD_MULTIPLE (mpi4py's
default thread level).
"""

from __future__ import annotations

import threading
import time

from mpisgd.comm.world import abort_job


class StepWatchdog:
    """Context manager: watches this rank's steps while the training loop runs."""

    def __init__(self, timeout: float, *, poll: float | None = None):
        self.timeout = float(timeout)
        self._phase: tuple[str, int, float, float] | None = None
        self._done = threading.Event()
        self._poll = poll if poll is not None else min(1.0, max(self.timeout / 10, 0.05))
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StepWatchdog:
        if self.timeout > 0:
            self._thread = threading.Thread(target=self._watch, name="mpisgd-watchdog",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._phase = None
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def computing(self, step: int) -> None:
        self._phase = ("computing", step, time.monotonic(), self.timeout)

    def waiting(self, step: int, what: str) -> None:
        self._phase = (what, step, time.monotonic(), 2 * self.timeout + 5.0)

    def idle(self) -> None:
        self._phase = None

    def _watch(self) -> None:
        while not self._done.wait(self._poll):
            phase = self._phase
            if phase is None:
                continue
            what, step, since, limit = phase
            elapsed = time.monotonic() - since
            if elapsed <= limit:
                continue
            if what == "computing":
                abort_job(f"step {step} has been reading and computing for {elapsed:.1f} s "
                          f"on this rank, longer than train.step_timeout = "
                          f"{self.timeout:g} s: this rank stalled (a straggler, a hung read "
                          f"or a hung kernel); ending the job", 3)
            abort_job(f"waited {elapsed:.1f} s for the other ranks in {what} at step "
                      f"{step}, longer than 2 x train.step_timeout + 5 s = {limit:g} s: "
                      f"another rank is stuck or dead; ending the job", 3)

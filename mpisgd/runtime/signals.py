"""Stop requests: SIGTERM and SIGUSR1 (what Slurm sends before a time limit or on
pre-emption) and SIGINT (Ctrl-C; MPICH's mpiexec forwards it to every rank) set a flag;
the training loop sees it at the next step, all ranks agree, a checkpoint is written,
summary.json says why, and the job exits with code 75 (a batch script requeues it) or
130 after Ctrl-C (the shell's code for it: the user asked to stop, not to requeue).

MPICH's hydra, told to keep a job alive through a process's death
(``-disable-auto-cleanup``), sends SIGUSR1 to every other process when one dies: its
failure notification, not a stop request. A job going on through deaths registers
:func:`explain_usr1_with` a check that says whether a death was just reported (its
supervisor's notice); such a SIGUSR1 is then ignored.

A second Ctrl-C ends the process at once (KeyboardInterrupt: the job is aborted with
code 130). MPICH's mpiexec does the same on its own: it kills the job on a second Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
INTERRUPT_EXIT = 130   # 128 + SIGINT, what a shell reports for a job ended by Ctrl-C
# One Ctrl-C can arrive twice within milliseconds: from the terminal and again from this
# rank's supervisor (mpisgd/runtime/supervise.py), under a launcher that leaves the ranks
# in the terminal's process group. Presses this close together count as one; a person's
# second press comes later.
SAME_PRESS_S = 0.5

_received: list[tuple[int, float]] = []   # (signal, time.monotonic()) in arrival order
# Whether a SIGUSR1 is the launcher's notice of a death (see the module's text).
_death_notice: list[Callable[[], bool]] = []


def explain_usr1_with(check: Callable[[], bool] | None) -> None:
    """``check()``: true when a rank's death was reported just now (None: no check)."""
    _death_notice[:] = [check] if check is not None else []


def _handler(signum, _frame) -> None:
    if signum == signal.SIGUSR1 and _death_notice and _death_notice[0]():
        return
    _received.append((signum, time.monotonic()))


def _interrupt(signum, _frame) -> None:
    now = time.monotonic()
    first = next((t for s, t in _received if s == signal.SIGINT), None)
    if first is not None and now - first > SAME_PRESS_S:
        raise KeyboardInterrupt   # the second Ctrl-C: no more waiting for a checkpoint
    _received.append((signum, now))


def install() -> None:
    """Main thread only, before training starts: a fresh start for this job (a process
    that runs several jobs, like the test suite's pool, forgets the last one's signal)."""
    _received.clear()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)
    signal.signal(signal.SIGINT, _interrupt)


@contextlib.contextmanager
def stop_requests():
    """:func:`install` for the block; the previous handlers after it (Ctrl-C is then a
    KeyboardInterrupt again)."""
    before = {sig: signal.getsignal(sig) for sig in (*STOP_SIGNALS, signal.SIGINT)}
    install()
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def requested() -> bool:
    return bool(_received)


def name() -> str:
    return signal.Signals(_received[0][0]).name if _received else ""


def names() -> list[str]:
    """The distinct signals received, in arrival order."""
    return list(dict.fromkeys(signal.Signals(s).name for s, _ in _received))

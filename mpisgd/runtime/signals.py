"""SIGTERM and SIGUSR1 (what Slurm sends before a time limit or on pre-emption) set a
flag; the training loop sees it at the next step, all ranks agree, a checkpoint is
written and the job exits with code 75 so that a batch script can requeue it."""

from __future__ import annotations

import signal

_received: list[int] = []
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _handler(signum, _frame) -> None:
    _received.append(signum)


def install() -> None:
    """Main thread only, before training starts: a fresh start for this job (a process
    that runs several jobs, like the test suite's pool, forgets the last one's signal)."""
    _received.clear()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)


def requested() -> bool:
    return bool(_received)


def name() -> str:
    return signal.Signals(_received[0]).name if _received else ""

"""Learning that a rank died, when the job goes on without it (``ps.on_worker_failure =
"continue"``).

A rank killed by a signal cannot say so, and MPI does not tell the others either (under
MPICH's ``-disable-auto-cleanup`` the survivors keep exchanging messages; a receive from
the dead rank just never completes). Its supervisor (``runtime.supervise``) does: the
parent process writes ``rank-R.json`` into the run's notice folder before it reports the
death. A daemon thread on every rank polls that folder; the server loop asks it for new
deaths between messages. A server's or rank 0's death cannot be gone through (the
parameters it held are gone): the thread then ends the job at once, pointing at
``mpisgd launch --max-restarts``, instead of leaving the others waiting.

A job that lost a rank cannot use any collective over the world again, nor
``MPI_Finalize`` (each waits for the dead rank): :func:`leave_job` ends a surviving
process once its files are written.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from mpisgd.comm.world import abort_job
from mpisgd.runtime import signals
from mpisgd.runtime.supervise import outcome_decided, report_deaths_to

POLL_S = 0.1
# A SIGUSR1 this soon after a death notice was written is hydra's failure notification.
NOTICE_FRESH_S = 5.0


def notice_folder(run_dir: Path, run_token: str) -> Path:
    """Where this launch's death notices go (one folder per launch: a relaunch into the
    same run folder does not read the notices of the one before)."""
    return run_dir / "failures" / run_token


class FailureWatch:
    """Context manager: polls the notice folder every ``POLL_S`` seconds.

    ``fatal``: the ranks whose death ends the job (servers, rank 0); ``why``: the line
    that says why it cannot go on without them.
    """

    def __init__(self, folder: Path, fatal: tuple[int, ...], why: str):
        self.folder, self.fatal, self.why = folder, set(fatal), why
        self.folder.mkdir(parents=True, exist_ok=True)
        report_deaths_to(str(self.folder))
        self._dead: dict[int, dict] = {}
        self._seen: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mpisgd-failures",
                                        daemon=True)

    def __enter__(self) -> FailureWatch:
        signals.explain_usr1_with(self.fresh_notice)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        signals.explain_usr1_with(None)

    def fresh_notice(self) -> bool:
        """A death notice written in the last NOTICE_FRESH_S seconds exists."""
        try:
            times = [e.stat().st_mtime for e in os.scandir(self.folder)
                     if e.name.endswith(".json")]
        except OSError:
            return False
        return any(time.time() - t < NOTICE_FRESH_S for t in times)

    def new_deaths(self) -> dict[int, dict]:
        """Ranks reported dead since the last call, with their notices."""
        with self._lock:
            fresh = {r: n for r, n in self._dead.items() if r not in self._seen}
            self._seen.update(fresh)
        return fresh

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            self.scan()

    def scan(self) -> None:
        """Read the notices once (the thread does it every POLL_S seconds)."""
        try:
            names = [n for n in os.listdir(self.folder)
                     if n.startswith("rank-") and n.endswith(".json")]
        except OSError:
            return
        for name in names:
            rank = int(name[5:-5])
            if rank in self._dead:
                continue
            try:
                notice = json.loads((self.folder / name).read_text())
            except (OSError, ValueError):
                continue   # written whole by a rename: retried at the next poll
            with self._lock:
                self._dead[rank] = notice
            if rank in self.fatal:
                abort_job(f"rank {rank} died ({notice.get('cause', 'no cause given')}); "
                          f"{self.why}", 3)


def leave_job(code: int = 0) -> None:
    """End this surviving process without MPI_Finalize, which would wait for the dead
    rank: its output is flushed, its files were written and synced by the caller."""
    sys.stdout.flush()
    sys.stderr.flush()
    outcome_decided()
    os._exit(code)

"""When a parameter server applies pushes and answers workers: bsp, asp, ssp, backup workers.

A pure state machine over worker indices (0..n_workers-1, the server's order of the
ranks that push) and step numbers: no MPI, no arrays. The server (``server.py``) owns
the messages and the parameters; it tells the policy what arrived and what it applied,
and asks it what to do. Every push gets exactly one answer: ``answer(i)`` is called
once per push the server answers (and once per leave), and says whether that answer
tells the worker to stop.

* bsp: a server applies step t once it holds step-t pushes from all workers but
  ``backup_workers``; it sums them in worker order (deterministic), replies to them;
  a push that arrives for an already-applied step is dropped, counted, and answered
  at once with the current parameters, and its worker skips ahead.
* asp: every push is applied on arrival and answered at once (Downpour).
* ssp: as asp, but the reply that lets a worker start step t+1 is held until the
  slowest unfinished worker has completed step t+1-s (s = ``staleness``; s = 0: no
  worker runs ahead).

A worker that another server told to stop sends a "leave" push (no gradient): it is
answered once, with stop, and is not processed as a gradient (``leave``).

A worker that died (``ps.on_worker_failure = "continue"``) is dropped (``drop``): it is
stopped, its held push is forgotten, and it no longer counts anywhere: bsp applies a
step from the pushes of the others (as if it were one more backup worker), ssp's
slowest worker is the slowest live one, and checkpoints go by the live workers' clocks.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum


class Action(Enum):
    """What the server does with an asynchronous push it has just applied."""

    REPLY = "reply"   # answer now
    HOLD = "hold"     # ssp: the answer waits until ``released`` names the worker
    STOP = "stop"     # the worker's last step: answer now, with stop


class Consistency:
    """What every consistency model tracks: pushes held, workers stopped, the version.

    ``version``: bsp, the next global step to apply; asp/ssp, the number of non-empty
    pushes applied since ``start`` (added to it). ``interrupted``: a signal stopped
    training; from then on every answer says stop (the server sets it).
    """

    mode = ""

    def __init__(self, n_workers: int, total: int, start: int):
        self.n_workers, self.total = n_workers, total
        self.version = start
        self.interrupted = False
        # Resumed at the end (a final checkpoint), no worker has a step left and none
        # will push: everyone is done from the start.
        self.stopped = [start >= total] * n_workers
        self.held = [False] * n_workers   # the worker's inbox holds an unanswered push
        self.steps = [start] * n_workers  # the step of the worker's latest push
        # ssp: (step a worker was allowed to start) - (steps the slowest had completed)
        self.lead: Counter = Counter()
        self.dead: set[int] = set()

    def on_push(self, worker: int, step: int) -> None:
        """A push (or a leave) of ``step`` from ``worker`` arrived."""
        self.held[worker] = True
        self.steps[worker] = step

    def leave(self, worker: int) -> bool:
        """The worker leaves (another server stopped it): answer it once, with stop."""
        return self.answer(worker, stop=True)

    def answer(self, worker: int, stop: bool = False) -> bool:
        """The server answers the worker's push now: whether the answer says stop.

        A worker told to stop pushes no more (the server posts no further receive)."""
        stop = stop or self.interrupted or self._over()
        self.held[worker] = False
        if stop:
            self.stopped[worker] = True
        return stop

    def drop(self, worker: int) -> None:
        """The worker died: stop expecting it; its held push (if any) is not applied."""
        self.dead.add(worker)
        self.stopped[worker] = True
        self.held[worker] = False

    def live(self) -> list[int]:
        return [i for i in range(self.n_workers) if i not in self.dead]

    def finished(self) -> bool:
        """Every worker has been told to stop: the server's loop ends."""
        return all(self.stopped)

    def missing(self) -> list[int]:
        """The workers the server is waiting for (the stall watchdog names them)."""
        return [i for i in range(self.n_workers) if not self.stopped[i] and not self.held[i]]

    def _over(self) -> bool:
        """Every answer says stop from now on, without a signal."""
        return False


class Bsp(Consistency):
    """Bulk synchronous: step ``version`` is applied from the pushes of all workers but
    ``backup_workers``; late pushes are dropped."""

    mode = "bsp"

    def __init__(self, n_workers: int, total: int, start: int, backup_workers: int = 0):
        super().__init__(n_workers, total, start)
        self.backup_workers = backup_workers

    def late(self) -> list[int]:
        """Workers whose held push is for an already-applied step, in worker order: the
        server drops each push and answers it at once (the worker skips ahead)."""
        return [i for i in range(self.n_workers) if self.held[i] and self.steps[i] < self.version]

    def ready(self) -> list[int] | None:
        """The workers whose pushes make up step ``version``, in worker order (the order
        of the sum), or None while too few have pushed it or training is over.

        Workers that stopped or left still count in the number needed: bsp does not
        shrink the step when a worker goes. Dead workers do not."""
        if self.version >= self.total:
            return None
        ready = [i for i in range(self.n_workers) if self.held[i] and self.steps[i] == self.version]
        needed = self.n_workers - len(self.dead) - self.backup_workers
        if not ready or len(ready) < needed:
            return None
        return ready

    def step_complete(self) -> None:
        """The server applied step ``version`` (then answers the ``ready`` workers)."""
        self.version += 1

    def _over(self) -> bool:
        return self.version >= self.total


class Asp(Consistency):
    """Asynchronous: every push is applied on arrival and answered at once."""

    mode = "asp"

    def __init__(self, n_workers: int, total: int, start: int):
        super().__init__(n_workers, total, start)
        self.clock = [start] * n_workers   # steps completed per worker
        self.waiting: list[int] = []       # ssp: workers whose answer is held back

    def applied(self, worker: int, step: int, count: int, last: bool) -> Action:
        """The server applied the worker's push of ``step`` (``count`` rows; ``last``:
        the worker's final step). An empty push does not count as a version."""
        if count > 0:
            self.version += 1
        self.clock[worker] = step + 1
        if last:
            return Action.STOP
        return self._after_apply(worker)

    def _after_apply(self, worker: int) -> Action:
        return Action.REPLY

    def can_reply(self, worker: int) -> bool:
        """asp: always."""
        return True

    def released(self) -> list[int]:
        """Workers whose held answers may go now, in the order they were held."""
        return []

    def slowest(self) -> int:
        """The steps the slowest worker has completed (stopped ones included, dead ones
        not): where the servers checkpoint together."""
        return min((c for i, c in enumerate(self.clock) if i not in self.dead),
                   default=self.total)

    def missing(self) -> list[int]:
        return [i for i in range(self.n_workers)
                if not self.stopped[i] and i not in self.waiting]


class Ssp(Asp):
    """Stale synchronous: as asp, but a worker may start step t+1 only once the slowest
    unfinished worker has completed t+1-``staleness`` steps."""

    mode = "ssp"

    def __init__(self, n_workers: int, total: int, start: int, staleness: int = 0):
        super().__init__(n_workers, total, start)
        self.staleness = staleness

    def _after_apply(self, worker: int) -> Action:
        self.held[worker] = False   # applied; only the answer is held back
        self.waiting.append(worker)
        return Action.HOLD

    def drop(self, worker: int) -> None:
        super().drop(worker)
        self.waiting = [i for i in self.waiting if i != worker]

    def _slowest_running(self) -> int:
        running = [c for c, s in zip(self.clock, self.stopped, strict=True) if not s]
        return min(running) if running else self.total

    def can_reply(self, worker: int) -> bool:
        # the worker wants to start step clock[worker]; allowed when the slowest worker
        # has completed clock[worker] - s steps
        return self._slowest_running() >= self.clock[worker] - self.staleness

    def released(self) -> list[int]:
        """Workers whose held answers may go now, in the order they were held; each
        released one's lead over the slowest is counted in ``lead``. Once interrupted
        every answer says stop, so none is held back any longer."""
        if not self.waiting:
            return []
        if self.interrupted:
            out, self.waiting = self.waiting, []
            return out
        # Answering without stop changes no clock: the same slowest for every worker.
        slowest = self._slowest_running()
        out = [i for i in self.waiting if slowest >= self.clock[i] - self.staleness]
        self.waiting = [i for i in self.waiting if i not in out]
        for i in out:
            # the lead of the step this worker now starts over the slowest worker's
            # completed steps, logged so tests can check the bound from the summary
            self.lead[self.clock[i] - slowest] += 1
        return out


def make_consistency(mode: str, n_workers: int, total: int, start: int,
                     backup_workers: int = 0, staleness: int = 0) -> Consistency:
    """The policy of ``ps.consistency`` for a server of ``n_workers`` pushing ranks."""
    if mode == "bsp":
        return Bsp(n_workers, total, start, backup_workers)
    if mode == "asp":
        return Asp(n_workers, total, start)
    if mode == "ssp":
        return Ssp(n_workers, total, start, staleness)
    raise ValueError(f"unknown ps.consistency {mode!r}")

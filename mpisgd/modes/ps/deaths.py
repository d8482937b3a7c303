"""A server going on through a worker's death (``ps.on_worker_failure = "continue"``).

A worker is declared dead when its supervisor's notice arrives (``comm.failures``:
within a tenth of a second of the death) or, when no notice comes (a node gone, a hung
process), when it has not pushed for ``ps.dead_after`` seconds since the server last
answered it (a worker the server holds is waiting, not hung; one that has not pushed
yet is starting, not hung) while another live worker waits on it. The server then drops
it (``Server.drop``): the policy stops expecting it, its receive is cancelled, nothing
more is sent to it, and under balanced assignment server rank 0 hands the chunks it
took but never had applied to the others.

A worker declared dead by the timeout may still be alive (a long stall): its receive
stays posted, and should a push come after all, the answer says it was evicted, and
that worker leaves the job alone.
"""

from __future__ import annotations

import time

from mpisgd.comm.failures import FailureWatch

CHECK_EVERY_S = 0.05


class Deaths:
    """One server's record of its dead workers and the clocks that find them."""

    def __init__(self, server, watch: FailureWatch, rows_per_epoch: list[int]):
        self.server, self.watch = server, watch
        self.rows_per_epoch = rows_per_epoch   # by world rank (partition placement)
        n = len(server.workers)
        start = server.policy.version
        self.applied = [start - 1] * n      # the last step of each worker applied here
        self.silent_since = [time.monotonic()] * n
        # Before its first push a worker is starting (compiling kernels on a cold numba
        # cache, reading its data: seconds on a loaded node): the timeout spares it, and
        # only its supervisor's notice or ps.stall_abort ends a start that never finishes.
        self.started = [False] * n
        self.evicted: set[int] = set()       # declared by the timeout: may come back
        self.records: list[dict] = []
        self.t0 = time.monotonic()
        self.next_check = 0.0
        self.dead_after = server.cfg.ps.dead_after
        self.noticed: float | None = None   # the wall time of the notice being handled

    def pushed(self, i: int) -> None:
        self.silent_since[i] = time.monotonic()
        self.started[i] = True

    def expecting(self, i: int) -> None:
        """The server answered worker i and now waits for its next push."""
        self.silent_since[i] = time.monotonic()

    def applied_step(self, i: int, step: int) -> None:
        self.applied[i] = max(self.applied[i], step)

    def due(self) -> bool:
        """Whether the server loop should come round to :meth:`check` now."""
        return time.monotonic() >= self.next_check

    def check(self) -> None:
        """Drop the workers found dead since the last check (at most every 50 ms)."""
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + CHECK_EVERY_S
        server, policy = self.server, self.server.policy
        for rank, notice in sorted(self.watch.new_deaths().items()):
            if rank in server.workers and server.workers.index(rank) not in policy.dead:
                self.noticed = notice.get("time")
                server.drop(server.workers.index(rank), notice.get("cause", "died"),
                            "supervisor")
        live = policy.live()
        waiting = set(getattr(policy, "waiting", ()))
        blocked = [i for i in live if policy.held[i] or policy.stopped[i] or i in waiting]
        for i in policy.missing():
            if (i not in policy.dead and self.started[i]
                    and now - self.silent_since[i] >= self.dead_after
                    and any(j != i for j in blocked)):
                self.evicted.add(i)
                server.drop(i, f"no push for {now - self.silent_since[i]:.1f} s since its "
                               f"last answer while the others waited "
                               f"(ps.dead_after = {self.dead_after:g} s)",
                            "timeout")

    def record(self, i: int, cause: str, how: str, queued: int, lost: int) -> dict:
        """The summary's line for worker i's death."""
        server = self.server
        rank = server.workers[i]
        plan = server.plan
        missed = max(0, plan.total - (self.applied[i] + 1))
        rows = (round(self.rows_per_epoch[rank] * missed / plan.steps_per_epoch)
                if self.rows_per_epoch[rank] else plan.rows_missed(i, self.applied[i] + 1))
        record = {"rank": rank, "after_s": round(time.monotonic() - self.t0, 3),
                  "version": server.policy.version, "last_step_applied": self.applied[i],
                  "detected_by": how, "cause": cause, "chunks_handed_over": queued,
                  "chunks_lost": lost, "rows_not_trained": rows,
                  # from the supervisor's notice to this server dropping the worker
                  "notice_to_drop_s": (round(time.time() - self.noticed, 4)
                                       if how == "supervisor" and self.noticed else None)}
        self.records.append(record)
        return record

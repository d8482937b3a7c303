"""The parameter-server worker loop: compute the gradient of this rank's rows, push one
slice to every server, receive the fresh slices.

Every push gets exactly one reply, so no buffer is ever overwritten in flight and no
message queue grows behind a slow worker.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from mpisgd.comm.compress import ErrorFeedback
from mpisgd.comm.failures import leave_job
from mpisgd.comm.nodegroup import NodeGroup
from mpisgd.comm.p2p import (
    F_EVICTED,
    F_INTERRUPTED,
    F_LAST,
    F_LEAVE,
    F_SIGNAL,
    F_STOP,
    H_BASE,
    H_COUNT,
    H_FLAGS,
    H_LOSS,
    H_STEP,
    H_VERSION,
    TAG_PUSH,
    TAG_REPLY,
    Message,
)
from mpisgd.comm.watchdog import StepWatchdog
from mpisgd.context import Context
from mpisgd.modes.common import Hooks, gradient_codec, write_trace
from mpisgd.runtime import signals
from mpisgd.runtime.log import warn


class Worker:
    """Worker ranks only: compute gradients of the worker's rows, push, pull.

    With ``group`` (node aggregation) the workers of a node write their gradients into a
    node-shared window, the group's leader sums them (in group-rank order: deterministic)
    and alone exchanges with the servers, and the pulled parameters land once per node
    in a shared window that every member reads.
    """

    def __init__(self, ctx: Context, theta: np.ndarray, ranges: list[tuple[int, int]],
                 start: int, plan, group: NodeGroup | None = None):
        self.ctx, self.ranges, self.start, self.group = ctx, ranges, start, group
        self.servers = ctx.roles.servers
        self.plan = plan   # where the worker's rows of each step come from (modes.batches)
        self.sync = ctx.cfg.ps.consistency == "bsp"
        self.pusher = group is None or group.leader
        if self.pusher:
            # One codec and error-feedback residual per server slice.
            codecs = [gradient_codec(ctx, hi - lo) for lo, hi in ranges]
            self.feedback = [None if c is None else ErrorFeedback(c, ctx.cfg.comm.error_feedback)
                             for c in codecs]
            self.push = [Message(hi - lo, theta.dtype) if c is None
                         else Message(c.nbytes, np.uint8) for (lo, hi), c in zip(ranges, codecs)]
            self.reply = [Message(hi - lo, theta.dtype) for lo, hi in ranges]
            self.grad = np.empty_like(theta)
        self.theta = theta if group is None else group.theta.array
        # Where this rank's gradient goes: its row of the node's window, or its own buffer.
        self.out = self.grad if group is None else group.grads.array[group.rank]
        self.hooks = Hooks(ctx.cfg.debug, ctx.topo.rank, ctx.nan_fired)
        self.counters = {"bytes_sent": 0, "bytes_received": 0, "steps_done": 0}

    def run(self) -> dict:
        ctx, plan = self.ctx, self.plan
        trace = {} if ctx.cfg.debug.trace_rows else None
        # Going on through deaths, each step's rows are written as it is answered: a dead
        # worker's file holds exactly the steps the servers applied (and no collective
        # write is possible at the end).
        self.trace_out = None
        if trace is not None and ctx.cfg.ps.on_worker_failure == "continue":
            (ctx.run_dir / "trace").mkdir(exist_ok=True)
            self.trace_out = open(ctx.run_dir / "trace" / f"rank{ctx.topo.rank}.bin", "wb")
        with StepWatchdog(ctx.cfg.train.step_timeout) as dog:
            version, interrupted = self._steps(dog, trace)
        plan.finish_reads()   # before any collective: servers may be answering data requests
        if self.trace_out is not None:
            self.trace_out.close()
        elif trace is not None:
            write_trace(ctx, [np.concatenate(v) for _, v in sorted(trace.items())])
        return {**self.counters, "version": version, "epochs": 0, "steps_per_epoch": 0,
                "batch": plan.batch, "samples": 0, "interrupted": interrupted}

    def _steps(self, dog: StepWatchdog, trace: dict | None) -> tuple[int, bool]:
        """The worker's loop: (the last version seen, whether a server was interrupted)."""
        ctx, plan, theta, group = self.ctx, self.plan, self.theta, self.group
        timers = ctx.timers
        step = version = self.start
        interrupted = False
        while step < plan.total:
            t0 = time.perf_counter()
            dog.computing(step)
            self.hooks.before_gradient(step)
            waited = plan.wait_s
            loss, count, ids = plan.gradient(step, theta, self.out)
            self.hooks.after_gradient(step, self.out)
            waited = plan.wait_s - waited
            if trace is not None and self.trace_out is None:
                trace.setdefault(step // plan.steps_per_epoch, []).append(ids)
            signal = signals.requested()
            t1 = time.perf_counter()
            dog.waiting(step, "a push/pull with the servers")
            if group is None:
                version, stop, flagged = self._exchange(step, version, self.grad, count,
                                                        loss, signal)
            else:
                # group.step calls the exchange at once, before step or version change
                version, stop, flagged = group.step(
                    (loss, count, signal),
                    lambda loss, count, signal: self._exchange(step, version, self.grad,  # noqa: B023
                                                               count, loss, signal),
                    self.grad if self.pusher else None)
            interrupted |= flagged
            if self.trace_out is not None:   # (epoch, row id) pairs of an answered step
                pairs = np.stack([plan.id_epochs(step), np.asarray(ids, dtype=np.int64)], 1)
                self.trace_out.write(pairs.tobytes())
                self.trace_out.flush()
            dog.idle()
            t2 = time.perf_counter()
            self.counters["steps_done"] += 1
            timers["compute"] += (t1 - t0) + (time.perf_counter() - t2) - waited
            timers["data"] += waited
            timers["comm"] += t2 - t1
            ctx.counters["rows"] += count
            ctx.timeline.add("compute", t0, t1)
            ctx.timeline.add("push+pull", t1, t2)
            if stop:
                break
            # bsp: the servers' version is the next global step (a dropped worker skips
            # ahead to it); asp/ssp: every worker walks its own steps.
            step = max(step + 1, version) if self.sync else step + 1
        return version, interrupted

    def _exchange(self, step: int, version: int, grad: np.ndarray, count: int, loss: float,
                  signal: bool) -> tuple[int, bool, bool]:
        """Push ``grad`` (a sum over ``count`` rows) to every server, receive the fresh
        slices into the parameters; returns (version, stop, interrupted)."""
        world = self.ctx.topo.world
        last = (not self.sync) and step + 1 >= self.plan.total
        requests = []
        for (lo, hi), msg, reply, server, feedback in zip(self.ranges, self.push, self.reply,
                                                          self.servers, self.feedback):
            msg.ints[H_STEP], msg.ints[H_COUNT] = step, count
            msg.ints[H_FLAGS] = (F_LAST if last else 0) | (F_SIGNAL if signal else 0)
            msg.ints[H_BASE] = version
            msg.floats[H_LOSS] = loss
            if feedback is None:
                msg.payload[:] = grad[lo:hi]
            else:
                feedback.compress(grad[lo:hi], step, msg.payload)
            requests.append(world.Irecv(reply.spec, server, TAG_REPLY))
            requests.append(world.Isend(msg.spec, server, TAG_PUSH))
        MPI.Request.Waitall(requests)
        self.counters["bytes_sent"] += sum(m.nbytes for m in self.push)
        if any(reply.ints[H_FLAGS] & F_EVICTED for reply in self.reply):
            self._evicted()
        stops = [bool(reply.ints[H_FLAGS] & F_STOP) for reply in self.reply]
        if any(stops) and not all(stops):
            self._leave([i for i, s in enumerate(stops) if not s])
        stop = interrupted = False
        versions = []
        for (lo, hi), reply in zip(self.ranges, self.reply):
            self.theta[lo:hi] = reply.payload
            versions.append(int(reply.ints[H_VERSION]))
            stop |= bool(reply.ints[H_FLAGS] & F_STOP)
            interrupted |= bool(reply.ints[H_FLAGS] & F_INTERRUPTED)
        self.counters["bytes_received"] += sum(m.nbytes for m in self.reply)
        return max(versions), stop, interrupted

    def _evicted(self) -> None:
        """The servers declared this worker dead (no push for ps.dead_after seconds) and
        went on without it: it leaves the job alone, the others finish."""
        warn(f"worker rank {self.ctx.topo.rank} was declared dead by the servers (no push "
             f"for ps.dead_after = {self.ctx.cfg.ps.dead_after:g} s) and leaves the job; "
             f"the others go on without it", all_ranks=True)
        leave_job(3)

    def _leave(self, indices: list[int]) -> None:
        """Tell the servers ``indices`` that this worker stops, and wait for their stop.

        Asynchronous servers decide to stop on their own (a signal reaches each of them
        at its own moment), so one server may tell a worker to stop while another still
        expects its next push: without this goodbye that server would wait for the
        worker until ps.stall_abort. The reply to a leave always says stop.
        """
        world = self.ctx.topo.world
        requests = []
        for i in indices:
            msg, reply, server = self.push[i], self.reply[i], self.servers[i]
            msg.ints[H_FLAGS], msg.ints[H_COUNT] = F_LEAVE, 0
            requests.append(world.Irecv(reply.spec, server, TAG_REPLY))
            requests.append(world.Isend(msg.spec, server, TAG_PUSH))
        MPI.Request.Waitall(requests)
        self.counters["bytes_sent"] += sum(self.push[i].nbytes for i in indices)

    def held_bytes(self) -> dict[str, int]:
        """Bytes of parameters and buffers this rank allocated (see memory.node_memory)."""
        if self.group is not None:
            held = self.group.held_bytes()
        else:
            held = {"params": self.theta.nbytes, "buffers": self.grad.nbytes}
        if self.pusher:
            held["buffers"] += (self.grad.nbytes if self.group is not None else 0) + sum(
                m.nbytes for m in self.push + self.reply)
        return held

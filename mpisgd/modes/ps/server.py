"""The parameter server's event loop: receive pushes, apply updates, answer, checkpoint.

A server holds a contiguous key range of the parameters and the optimizer state for it.
Every consistency decision (which pushes make a step, which answers are held back, when
an answer says stop) is the policy's (``consistency.py``); this module does the messages,
the arithmetic, the checkpoints, the epoch lines and the stall watchdog.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
from mpi4py import MPI

from mpisgd.comm import abort_job
from mpisgd.comm.p2p import (
    F_EVICTED,
    F_INTERRUPTED,
    F_LAST,
    F_LEAVE,
    F_PULL,
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
    Poller,
)
from mpisgd.context import Context
from mpisgd.modes.common import Hooks, Saver, check_finite, finish_gradient, gradient_codec
from mpisgd.modes.dataserve import DataServer
from mpisgd.modes.ps.consistency import Action, make_consistency
from mpisgd.modes.ps.epochlog import EpochLog
from mpisgd.optim import clip_factor, learning_rate, make_optimizer, soft_threshold, sq_norm
from mpisgd.runtime import signals
from mpisgd.runtime.launch_env import cores_here, ranks_on_this_node
from mpisgd.runtime.log import warn


class Server:
    """Server ranks only: hold a key range and its optimizer state; serve the workers."""

    def __init__(self, ctx: Context, theta: np.ndarray, lo: int, hi: int, index: int, comm,
                 start: int, opt_state: dict | None, workers: tuple[int, ...], plan):
        cfg = ctx.cfg
        self.ctx, self.cfg, self.theta, self.lo, self.hi = ctx, cfg, theta, lo, hi
        self.index, self.comm = index, comm   # comm: the servers' own communicator
        self.workers = workers   # the ranks that push: every worker, or a leader per node
        self.plan = plan   # steps per epoch and in all
        self.bsp = cfg.ps.consistency == "bsp"
        self.policy = make_consistency(cfg.ps.consistency, len(workers), plan.total, start,
                                       cfg.ps.backup_workers, cfg.ps.staleness)
        self.mask = ctx.l2_mask[lo:hi]
        self._make_state(opt_state)
        self.saver = Saver(ctx)
        self.hooks = Hooks(cfg.debug, ctx.topo.rank, ctx.nan_fired)
        self.checkpoint_path = None
        self._make_boxes()
        self.sends = [MPI.REQUEST_NULL] * len(workers)
        self.recvs = [MPI.REQUEST_NULL] * len(workers)
        every = self.saver.every_steps
        # asp/ssp: the next periodic checkpoint, at a multiple of checkpoint.every_steps.
        self.next_save = (start // every + 1) * every if every else None
        self.counters = {"updates": 0, "dropped": 0, "dropped_from": Counter(),
                         "staleness": Counter(), "bytes_sent": 0, "bytes_received": 0}
        self.log = EpochLog(ctx, plan, start)
        self.samples = 0
        self.warned = False
        # A server spins while its node has a core per rank (the launcher's count, else
        # the node communicator's), and sleeps between polls when ranks share cores.
        local = ranks_on_this_node() or ctx.topo.local_size
        self.poller = Poller(cfg.ps.poll_max_us * 1e-6, self._watchdog,
                             spin=local <= cores_here())
        # Server placement: this server's part of the dataset, served to the workers.
        self.data = (DataServer(ctx, index, len(ctx.roles.servers), plan.table)
                     if cfg.data.placement == "server" else None)
        self.deaths = None   # ps.on_worker_failure = "continue": a modes.ps.deaths.Deaths

    def _make_state(self, opt_state: dict | None) -> None:
        """The optimizer of this key range, from a checkpoint's state when resuming."""
        self.optimizer = make_optimizer(self.cfg.optimizer, self.hi - self.lo, self.theta.dtype,
                                        decay_mask=self.mask)
        if opt_state:
            self.optimizer.load_state(opt_state)

    def _make_boxes(self) -> None:
        """A message buffer per worker each way, and the sums' buffers. Pushes arrive
        encoded when comm.compression is on (the outbox: replies stay dense)."""
        n, dtype = self.hi - self.lo, self.theta.dtype
        self.codec = gradient_codec(self.ctx, n)
        self.inbox = [Message(n, dtype) if self.codec is None
                      else Message(self.codec.nbytes, np.uint8) for _ in self.workers]
        self.outbox = [Message(n, dtype) for _ in self.workers]
        self.acc = np.zeros(n, dtype=dtype)
        self.scratch = np.zeros(n, dtype=dtype)

    def held_bytes(self) -> dict[str, int]:
        """Bytes of parameters, optimizer state and buffers this server allocated."""
        state = sum(v.nbytes for k, v in self.optimizer.state().items() if k != "step")
        boxes = sum(m.nbytes for m in self.inbox + self.outbox) + self.acc.nbytes
        return {"params": self.theta.nbytes, "optimizer_state": state, "buffers": boxes}

    # -- the loop ------------------------------------------------------------------
    def run(self) -> dict:
        policy = self.policy
        for i in range(len(self.workers)):
            self._repost(i)
        timers = self.ctx.timers
        while not policy.finished():
            self.hooks.signal_at(policy.version)
            t0 = time.perf_counter()
            done = self._wait()
            t1 = time.perf_counter()
            if self.deaths is not None:
                done = self._heard(done)
            pulls = [i for i in done if self.inbox[i].ints[H_FLAGS] & F_PULL]
            for i in pulls:   # no gradient, not a step: the parameters asked for, now
                self._answer(i)
            done = [i for i in done if i not in pulls]
            for i in done:
                policy.on_push(i, int(self.inbox[i].ints[H_STEP]))
                self.counters["bytes_received"] += self.inbox[i].nbytes
            leaving = [i for i in done if self.inbox[i].ints[H_FLAGS] & F_LEAVE]
            for i in leaving:   # no gradient: answered with stop alone (see Worker._leave)
                self._send(i, policy.leave(i))
            done = [i for i in done if i not in leaving]
            if self.bsp:
                self._bsp()
            else:
                for i in done:
                    self._async(i)
                for i in policy.released():
                    self._answer(i)
                self._periodic_async()
            if self.deaths is not None:
                self.deaths.check()
            timers["comm"] += t1 - t0
            timers["compute"] += time.perf_counter() - t1
            self.ctx.timeline.add("wait", t0, t1)
            self.ctx.timeline.add("apply+reply", t1, time.perf_counter())
        return self._finish()

    def _wait(self) -> list[int]:
        """The workers whose pushes arrived (waiting for at least one)."""
        if self.data is None:
            return self.poller.wait_some(self.recvs)
        # data requests are answered as they come, between pushes
        n = len(self.workers)
        done = self.poller.wait_some(self.recvs + self.data.recvs)
        for i in [i - n for i in done if i >= n]:
            self.data.serve(i)
        return [i for i in done if i < n]

    def _finish(self) -> dict:
        """After the last answer: final checkpoint (asp/ssp) and the server's statistics."""
        policy = self.policy
        MPI.Request.Waitall(self.sends)
        if self.data is not None:
            self.data.finish(self.poller)
            self.counters["bytes_sent"] += self.data.sent_bytes
        if not self.bsp:
            # At the end (of training, or after a signal) all servers checkpoint together
            # at the step the slowest worker completed.
            policy.interrupted = bool(self.comm.allreduce(policy.interrupted, op=MPI.MAX))
            if policy.interrupted or (self.saver.enabled and self.cfg.checkpoint.final):
                self._save("signal" if policy.interrupted else "final")
        self.log.progress.close()
        return {**self.counters, "dropped_from": dict(self.counters["dropped_from"]),
                "staleness": dict(self.counters["staleness"]),
                "lead": dict(policy.lead), "version": policy.version,
                "epochs": self.log.epochs, "steps_per_epoch": self.plan.steps_per_epoch,
                "batch": self.plan.batch, "samples": self.samples, "steps_done": 0,
                "interrupted": policy.interrupted, "checkpoint": str(self.checkpoint_path),
                "deaths": self.deaths.records if self.deaths is not None else []}

    # -- consistency models -----------------------------------------------------------
    def _bsp(self) -> None:
        """Drop late pushes; apply the current step once enough workers have pushed it."""
        policy = self.policy
        for i in policy.late():
            self.counters["dropped"] += 1
            self.counters["dropped_from"][self.workers[i]] += 1
            self._answer(i)
        while (ready := policy.ready()) is not None:
            count = sum(int(self.inbox[i].ints[H_COUNT]) for i in ready)
            loss = sum(float(self.inbox[i].floats[H_LOSS]) for i in ready)
            self._apply_ready(ready, count, loss)
            if self.deaths is not None:
                for i in ready:
                    self.deaths.applied_step(i, policy.version)
            policy.step_complete()
            self.log.advance(policy.version, self.counters)
            self._maybe_checkpoint(any(self.inbox[i].ints[H_FLAGS] & F_SIGNAL for i in ready))
            for i in ready:
                self._answer(i)
            if policy.interrupted:
                return

    def _maybe_checkpoint(self, flagged: bool) -> None:
        """bsp, after each step: the servers agree on checkpointing and stopping."""
        version = self.policy.version
        stop = flagged or signals.requested()
        vote = self.saver.time_due()
        if self.comm.Get_size() > 1:   # one tiny collective among servers per step
            stop, vote = self.comm.allreduce((stop, vote), op=_max_pair)
        final = version == self.plan.total and self.saver.enabled and self.cfg.checkpoint.final
        if stop or self.saver.due(version, bool(vote)) or final:
            self.policy.interrupted = bool(stop)
            self._save("signal" if stop else "periodic")

    def _periodic_async(self) -> None:
        """asp/ssp: checkpoint when the slowest worker completes a multiple of
        checkpoint.every_steps.

        Every worker pushes every step to every server, so each server sees the slowest
        worker's clock pass each multiple exactly once and in order: the servers meet in
        the same collective saves without extra coordination. The one that gets there
        first waits in the save for the others, which are still being fed by the
        workers' pushes already sent to them. The saved parameters include the pushes
        faster workers made past that step, which a resumed run makes again: an
        asynchronous resume is approximate, as asynchronous training is.
        """
        if self.next_save is None:
            return
        slowest = self.policy.slowest()
        while self.next_save <= slowest and self.next_save < self.plan.total:
            self._save("periodic", self.next_save)
            self.next_save += self.saver.every_steps

    def _save(self, reason: str, step: int | None = None) -> None:
        """Collective over the servers. bsp: at the step just applied; asp/ssp: at the
        steps the slowest worker completed (workers resume there together)."""
        t0 = time.perf_counter()
        if step is None:
            step = self.policy.version if self.bsp else self.policy.slowest()
        if not self.bsp:
            step = self.comm.allreduce(step, op=MPI.MIN)
        self.checkpoint_path = self.saver.save_sharded(
            self.comm, self.index, self.lo, self.hi, self.theta, self.optimizer.state(),
            step, reason)
        self.ctx.timers["checkpoint"] += time.perf_counter() - t0
        self.ctx.timeline.add("checkpoint", t0, time.perf_counter())

    def _async(self, i: int) -> None:
        """asp/ssp: apply one worker's push now; reply now (asp) or when allowed (ssp)."""
        msg, policy = self.inbox[i], self.policy
        if msg.ints[H_FLAGS] & F_SIGNAL or signals.requested():
            policy.interrupted = True   # from now on every reply says stop
        step = int(msg.ints[H_STEP])
        self.counters["staleness"][policy.version - int(msg.ints[H_BASE])] += 1
        count = int(msg.ints[H_COUNT])
        self._apply_push(i, step, count, float(msg.floats[H_LOSS]))
        if self.deaths is not None:
            self.deaths.applied_step(i, step)
        action = policy.applied(i, step, count, bool(msg.ints[H_FLAGS] & F_LAST))
        self.log.advance(policy.slowest(), self.counters)
        if action is not Action.HOLD:
            self._answer(i, stop=action is Action.STOP)

    def _apply_ready(self, ready: list[int], count: int, loss: float) -> None:
        """bsp: one step from the pushes of workers ``ready`` (a subclass may sum others)."""
        acc = self.acc
        acc[:] = 0
        for i in ready:   # worker order: the same sum on every run
            self._add_push(i, acc)
        self._apply(acc, count, loss, self.policy.version)

    def _apply_push(self, i: int, step: int, count: int, loss: float) -> None:
        """asp/ssp: one step from worker i's push of ``step``."""
        if self.codec is None:
            grad = self.inbox[i].payload
        else:
            grad = self.acc
            grad[:] = 0
            self._add_push(i, grad)
        self._apply(grad, count, loss, step)

    def _add_push(self, i: int, out: np.ndarray) -> None:
        """``out +=`` the gradient in worker i's push (decoded when compressed)."""
        msg = self.inbox[i]
        if self.codec is None:
            out += msg.payload
        else:
            self.codec.decode_add(msg.payload, int(msg.ints[H_STEP]), out, self.scratch)

    # -- shared pieces -------------------------------------------------------------
    def _apply(self, grad: np.ndarray, count: int, loss_sum: float, step: int) -> None:
        """One optimizer step on this server's key range from a gradient sum."""
        cfg = self.cfg
        if count > 0:  # an asynchronous push may carry no rows (a worker's empty share)
            lr = self._rate(step, count)
            finish_gradient(grad, count, self.theta, cfg.model.l2, self.mask)
            self._clip(grad)
            # Only this server sees the problem: not agreed, so the CLI aborts the job.
            check_finite(loss_sum / count, grad, step, lr, agreed=False)
            self.optimizer.step(self.theta, grad, lr)
            if cfg.model.l1:
                soft_threshold(self.theta, lr * cfg.model.l1, self.mask)
            self.counters["updates"] += 1
            self.samples += count
        self.log.add(loss_sum, count)

    def _rate(self, step: int, count: int) -> float:
        """The learning rate of an update at ``step`` from a push of ``count`` rows."""
        epoch = step // self.plan.steps_per_epoch
        lr = learning_rate(self.cfg.optimizer, step, epoch, self.plan.total)
        if not self.bsp:
            # The rate refers to the global minibatch. An asynchronous push carries
            # one worker's share of it, so it moves the parameters by that share: the
            # W pushes of a step together move them as far as one synchronous step.
            lr *= count / self.plan.batch
        return lr

    def _clip(self, grad: np.ndarray) -> None:
        """optimizer.clip_norm by the global norm: each server's squared norm, summed
        over the servers (bsp servers are in step; the config refuses clipping with
        several asynchronous servers, which would pair different pushes)."""
        if self.cfg.optimizer.clip_norm:
            sq = sq_norm(grad)
            if self.comm.Get_size() > 1:
                sq = self.comm.allreduce(sq)
            grad *= grad.dtype.type(clip_factor(sq, self.cfg.optimizer.clip_norm))

    def _answer(self, i: int, stop: bool = False) -> None:
        """Answer worker i's push with the current parameters (stop as the policy says)."""
        self._send(i, self.policy.answer(i, stop))

    def _send(self, i: int, stop: bool) -> None:
        """Send worker i the current parameters, then expect its next push unless stopped."""
        interrupted = self.policy.interrupted
        self.sends[i].Wait()   # the previous reply to this worker has been delivered
        out = self.outbox[i]
        out.ints[H_VERSION] = self.policy.version
        out.ints[H_FLAGS] = (F_STOP if stop else 0) | (F_INTERRUPTED if interrupted else 0)
        out.payload[:] = self.theta
        self.sends[i] = self.ctx.topo.world.Isend(out.spec, self.workers[i], TAG_REPLY)
        self.counters["bytes_sent"] += out.nbytes
        self._repost(i)

    def _repost(self, i: int) -> None:
        if not self.policy.stopped[i]:
            self.recvs[i] = self.ctx.topo.world.Irecv(self.inbox[i].spec, self.workers[i],
                                                      TAG_PUSH)
        if self.deaths is not None:
            # its silence counts from now: a worker held while another was late has not
            # pushed for as long, but it was waiting on us, not hung
            self.deaths.expecting(i)

    # -- going on through a worker's death (modes.ps.deaths) -----------------------------
    def _heard(self, done: list[int]) -> list[int]:
        """The pushes to process: a dead worker's is dropped; one from a worker evicted
        by the timeout is answered with stop and evicted (it leaves the job)."""
        for i in done:
            if i in self.policy.dead:
                self._evict(i)
            else:
                self.deaths.pushed(i)
        return [i for i in done if i not in self.policy.dead]

    def _evict(self, i: int) -> None:
        """Answer a push of a worker declared dead: it was evicted (it then leaves)."""
        out = self.outbox[i]
        out.ints[H_VERSION], out.ints[H_FLAGS] = self.policy.version, F_STOP | F_EVICTED
        spec = out.send_spec() if hasattr(out, "send_spec") else out.spec   # sparse: filled
        self.ctx.topo.world.Isend(spec, self.workers[i], TAG_REPLY)

    def drop(self, i: int, cause: str, how: str) -> None:
        """Worker i died: go on without it (see modes.ps.deaths)."""
        policy, deaths = self.policy, self.deaths
        policy.drop(i)
        if i not in deaths.evicted and self.recvs[i] != MPI.REQUEST_NULL:
            self.recvs[i].Cancel()
            self.recvs[i].Wait()
            self.recvs[i] = MPI.REQUEST_NULL
        self.sends[i] = MPI.REQUEST_NULL   # never delivered, never waited for
        if self.data is not None:
            self.data.drop(i)
        horizon = max(policy.steps) + 2
        queued, lost = self.plan.requeue_dead(i, deaths.applied[i], horizon)
        record = deaths.record(i, cause, how, queued, lost)
        warn(f"worker rank {record['rank']} is gone ({cause}); training goes on with "
             f"{len(policy.live())} worker(s) (ps.on_worker_failure = 'continue')"
             + (f"; {queued} chunk(s) it held go to the others" if queued else ""))
        if not policy.live():
            abort_job("every worker has died: training cannot go on; resume from the "
                      "newest checkpoint (`mpisgd launch --max-restarts` does it)", 3)
        if self.bsp:
            self._bsp()
        else:
            self.log.advance(policy.slowest(), self.counters)
            for j in policy.released():
                self._answer(j)

    def _watchdog(self, idle: float) -> bool:
        if self.deaths is not None and self.deaths.due():
            return True   # the loop comes round to deaths.check
        ps = self.cfg.ps
        if idle < ps.stall_timeout:
            self.warned = False
            return
        missing = [self.workers[i] for i in self.policy.missing()]
        text = (f"server rank {self.ctx.topo.rank} has waited {idle:.0f} s at version "
                f"{self.policy.version} for worker rank(s) {missing}")
        if idle >= ps.stall_abort:
            abort_job(f"{text}; giving up after ps.stall_abort = {ps.stall_abort:g} s", 3)
        if not self.warned:
            warn(text + f" (ps.stall_timeout = {ps.stall_timeout:g} s)", all_ranks=True)
            self.warned = True


def _max_pair(a, b, _datatype=None):
    """Element-wise max of two (stop, vote) pairs, for a pickled allreduce."""
    return (a[0] or b[0], max(a[1], b[1]))

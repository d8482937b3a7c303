"""Parameter-server mode: sharded servers; BSP, ASP and SSP consistency; backup workers.

Servers hold contiguous key ranges of the parameters and the optimizer state for
them. Each worker step: compute the gradient sum of the worker's rows of the global
minibatch, push one slice to every server (non-blocking), receive the fresh slices.
Every push gets exactly one reply, so no buffer is ever overwritten in flight and no
message queue grows behind a slow worker.

* bsp: a server applies step t once it holds step-t pushes from all workers but
  ``ps.backup_workers``; it sums them in worker order (deterministic), replies to them;
  a push that arrives for an already-applied step is dropped, counted, and answered
  at once with the current parameters, and its worker skips ahead.
* asp: every push is applied on arrival and answered at once (Downpour), with the
  learning rate scaled by the push's share of the global minibatch.
* ssp: as asp, but the reply that lets a worker start step t+1 is held until the
  slowest unfinished worker has completed step t+1-s (s = 0: no worker runs ahead).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
from mpi4py import MPI

from mpisgd.store import runfolder
from mpisgd.runtime import signals
from mpisgd.comm import abort_job
from mpisgd.comm.p2p import (F_INTERRUPTED, F_LAST, F_LEAVE, F_SIGNAL, F_STOP, H_BASE, H_COUNT,
    H_FLAGS, H_LOSS, H_STEP, H_VERSION, HEADER_SLOTS, TAG_PUSH, TAG_REPLY, Message, Poller,
    assemble)
from mpisgd.comm.compress import ErrorFeedback
from mpisgd.comm.shm import SharedArray, no_shm_reason, shm_possible, sync_arrays, warn_no_shm
from mpisgd.errors import ConfigError, Interrupted
from mpisgd.report.memory import node_memory
from mpisgd.comm.roles import key_range
from mpisgd.runtime.log import warn
from mpisgd.optim import (clip_factor, learning_rate, make_optimizer, slice_state,
    soft_threshold, sq_norm)
from mpisgd.runtime.progress import Progress
from mpisgd.modes.allreduce import make_plan, write_trace
from mpisgd.modes.batches import make_batches
from mpisgd.modes.dataserve import DataServer
from mpisgd.comm.watchdog import StepWatchdog
from mpisgd.modes.common import Hooks, Saver, check_finite, finish_gradient, gradient_codec


def fit(ctx, theta: np.ndarray, start_step: int = 0, opt_state: dict | None = None) -> dict:
    """Collective over the world: train ``theta`` in place; return run statistics.

    Server ranks run the server loop, the others the worker loop; at the end every
    rank receives the final parameters from the servers. Raises Interrupted (agreed)
    after a checkpoint when a signal stopped training.
    """
    world, rank, roles = ctx.topo.world, ctx.topo.rank, ctx.roles
    n_servers = len(roles.servers)
    ranges = [key_range(ctx.n_params, n_servers, s) for s in range(n_servers)]
    server_comm = world.Split(0 if roles.is_server(rank) else MPI.UNDEFINED, rank)
    t_train = time.perf_counter()
    group, pushers = node_groups(ctx, theta)
    plan = make_batches(ctx, make_plan(ctx))
    if len(pushers) <= ctx.cfg.ps.backup_workers:   # the same list on every rank
        raise ConfigError(f"ps.backup_workers = {ctx.cfg.ps.backup_workers} must be smaller "
                          f"than the number of ranks that push gradients ({len(pushers)}: "
                          f"one per node with ps.node_aggregate).", agreed=True)
    if roles.is_server(rank):
        index = roles.server_index(rank)
        lo, hi = ranges[index]
        t_init = time.perf_counter()
        server = Server(ctx, theta[lo:hi].copy(), lo, hi, index, server_comm, start_step,
                        slice_state(opt_state, lo, hi), pushers, plan)
        ctx.timers["setup"] += time.perf_counter() - t_init
        memory = node_memory(ctx.topo, server.held_bytes())
        stats = server.run()
        server_comm.Free()
        mine = server.theta
        if ctx.cfg.debug.trace_rows:
            write_trace(ctx, [])   # collective: servers take part with no rows
    else:
        worker = Worker(ctx, theta, ranges, start_step, plan, group)
        memory = node_memory(ctx.topo, worker.held_bytes())
        stats = worker.run()
        if group is not None:
            group.free()
        mine = np.empty(0, dtype=theta.dtype)
    plan.close()   # collective (the balanced counter's window)
    ctx.data_report = plan.report()
    if roles.is_server(rank) and server.data is not None:
        ctx.data_report = {"served_bytes": server.data.sent_bytes, **server.data.report,
                           "skipped": server.data.skipped}
    for key in ("bytes_sent", "bytes_received"):
        ctx.counters[key] += stats[key]
    t_tail = time.perf_counter()   # assembling the result and the counters: communication
    owners = {r: ranges[i] for i, r in enumerate(roles.servers)}
    assemble(world, theta, mine, owners)
    counters = world.gather(stats, root=0)
    head = world.bcast(stats if rank == 0 else None, root=0)
    ctx.timers["comm"] += time.perf_counter() - t_tail
    train_time = time.perf_counter() - t_train
    if world.allreduce(stats["interrupted"], op=MPI.MAX):
        raise Interrupted(f"stopped by a signal at step {head['version']}; checkpoint "
                          f"written to {head['checkpoint']}; rerun with --resume auto "
                          f"--out {ctx.run_dir} to continue.", agreed=True)
    out = {"epochs": head["epochs"], "steps": head["version"], "start_step": start_step,
           "steps_per_epoch": head["steps_per_epoch"], "global_batch": head["batch"],
           "samples": head["samples"], "train_time_s": train_time}
    if ctx.cfg.comm.compression != "none":
        head = HEADER_SLOTS * 8   # a push is one message: header + payload
        dense = sum(head + (hi - lo) * theta.itemsize for lo, hi in ranges)
        sent = sum(head + gradient_codec(ctx, hi - lo).nbytes for lo, hi in ranges)
        out["compression"] = {"scheme": ctx.cfg.comm.compression,
                              "bytes_per_push_dense": dense, "bytes_per_push_sent": sent,
                              "ratio": dense / sent, "error_feedback": ctx.cfg.comm.error_feedback}
    if rank == 0:
        out["ps"] = _summarise(counters, roles, ctx.cfg.ps)
        out["ps"]["pushers"] = list(pushers)
        out["memory"] = memory
    return out


def _summarise(counters: list[dict], roles, ps_cfg) -> dict:
    servers = [counters[r] for r in roles.servers]
    staleness, lead = Counter(), Counter()
    for s in servers:
        staleness.update(s["staleness"])
        lead.update(s["lead"])
    return {
        "consistency": ps_cfg.consistency, "servers": list(roles.servers),
        "workers": list(roles.workers),
        "updates_per_server": [s["updates"] for s in servers],
        "gradients_dropped": sum(s["dropped"] for s in servers),
        "dropped_per_worker": _sum_dicts(s["dropped_from"] for s in servers),
        "staleness_histogram": {str(k): v for k, v in sorted(staleness.items())},
        # ssp: (step a worker was allowed to start) - (steps the slowest had completed)
        "ssp_lead_histogram": {str(k): v for k, v in sorted(lead.items())},
        "ssp_max_lead": max(lead) if lead else None,
        "bytes_sent": [c["bytes_sent"] for c in counters],
        "bytes_received": [c["bytes_received"] for c in counters],
        "worker_steps": {str(r): counters[r]["steps_done"] for r in roles.workers},
    }


def _sum_dicts(dicts) -> dict:
    total = Counter()
    for d in dicts:
        total.update(d)
    return {str(k): v for k, v in sorted(total.items())}


class Worker:
    """Worker ranks only: compute gradients of the worker's rows, push, pull.

    With ``group`` (node aggregation) the workers of a node write their gradients into a
    node-shared window, the group's leader sums them (in group-rank order: deterministic)
    and alone exchanges with the servers, and the pulled parameters land once per node
    in a shared window that every member reads.
    """

    def __init__(self, ctx, theta: np.ndarray, ranges: list[tuple[int, int]], start: int,
                 plan, group: "NodeGroup | None" = None):
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
        with StepWatchdog(ctx.cfg.train.step_timeout) as dog:
            version, interrupted = self._steps(dog, trace)
        plan.finish_reads()   # before any collective: servers may be answering data requests
        if trace is not None:
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
            if trace is not None:
                trace.setdefault(step // plan.steps_per_epoch, []).append(ids)
            signal = signals.requested()
            t1 = time.perf_counter()
            dog.waiting(step, "a push/pull with the servers")
            if group is None:
                version, stop, flagged = self._exchange(step, version, self.grad, count,
                                                        loss, signal)
            else:
                version, stop, flagged = group.step(
                    (loss, count, signal),
                    lambda loss, count, signal: self._exchange(step, version, self.grad,
                                                               count, loss, signal),
                    self.grad if self.pusher else None)
            interrupted |= flagged
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


def node_groups(ctx, theta: np.ndarray) -> tuple["NodeGroup | None", tuple[int, ...]]:
    """Collective over the world: this worker's node group (None without aggregation)
    and the ranks that push to the servers (every worker, or one per node group).

    A node whose workers cannot share memory (``MPISGD_NO_SHM``) does not aggregate:
    its workers push on their own, with a warning; the servers learn who pushes.
    """
    topo, roles = ctx.topo, ctx.roles
    worker = not roles.is_server(topo.rank)
    aggregate = ctx.cfg.ps.node_aggregate and worker
    comm = topo.world.Split(topo.node_index if aggregate else MPI.UNDEFINED, topo.rank)
    group = None
    if comm != MPI.COMM_NULL:
        if comm.Get_size() > 1 and shm_possible(comm):
            group = NodeGroup(comm, theta)
        else:
            if comm.Get_size() > 1:
                warn_no_shm(comm, no_shm_reason())
            comm.Free()
    pusher = worker and (group is None or group.leader)
    pushers = tuple(r for r, p in enumerate(topo.world.allgather(pusher)) if p)
    return group, pushers


class Server:
    """Server ranks only: hold a key range and its optimizer state; serve the workers."""

    def __init__(self, ctx, theta: np.ndarray, lo: int, hi: int, index: int, comm,
                 start: int, opt_state: dict | None, workers: tuple[int, ...], plan):
        cfg = ctx.cfg
        self.ctx, self.cfg, self.theta, self.lo, self.hi = ctx, cfg, theta, lo, hi
        self.index, self.comm = index, comm   # comm: the servers' own communicator
        self.workers = workers   # the ranks that push: every worker, or a leader per node
        self.n_workers = len(self.workers)
        self.plan = plan   # steps per epoch and in all
        self.mode = cfg.ps.consistency
        self.mask = ctx.l2_mask[lo:hi]
        self.optimizer = make_optimizer(cfg.optimizer, hi - lo, theta.dtype, decay_mask=ctx.l2_mask[lo:hi])
        if opt_state:
            self.optimizer.load_state(opt_state)
        self.saver = Saver(ctx)
        self.hooks = Hooks(cfg.debug, ctx.topo.rank, ctx.nan_fired)
        self.interrupted = False
        self.checkpoint_path = None
        # Pushes arrive encoded when comm.compression is on (outbox: replies stay dense).
        self.codec = gradient_codec(ctx, hi - lo)
        self.inbox = [Message(hi - lo, theta.dtype) if self.codec is None
                      else Message(self.codec.nbytes, np.uint8) for _ in self.workers]
        self.outbox = [Message(hi - lo, theta.dtype) for _ in self.workers]
        self.sends = [MPI.REQUEST_NULL] * self.n_workers
        self.recvs = [MPI.REQUEST_NULL] * self.n_workers
        self.held = [False] * self.n_workers       # inbox[i] holds an unconsumed push
        # Worker i has been told to stop. Resumed at the end (a final checkpoint), no
        # worker has a step left and none will push: everyone is done from the start.
        self.stopped = [start >= plan.total] * self.n_workers
        self.clock = [start] * self.n_workers      # steps completed per worker (asp/ssp)
        self.waiting: list[int] = []               # ssp: replies held back
        self.version = start
        every = self.saver.every_steps
        # asp/ssp: the next periodic checkpoint, at a multiple of checkpoint.every_steps.
        self.next_save = (start // every + 1) * every if every else None
        self.acc = np.zeros(hi - lo, dtype=theta.dtype)
        self.scratch = np.zeros(hi - lo, dtype=theta.dtype)
        self.counters = {"updates": 0, "dropped": 0, "dropped_from": Counter(),
                         "staleness": Counter(), "lead": Counter(),
                         "bytes_sent": 0, "bytes_received": 0}
        self.is_logger = ctx.topo.rank == 0
        self.progress = Progress(cfg.output.progress, self.plan.total, self.is_logger)
        self.epoch_loss = 0.0
        self.epoch_rows = 0
        self.samples = 0
        self.applied_pushes = 0
        self.epochs_logged = 0
        self.t_epoch = time.perf_counter()
        self.warned = False
        self.poller = Poller(cfg.ps.poll_max_us * 1e-6, self._watchdog)
        # Server placement: this server's part of the dataset, served to the workers.
        self.data = (DataServer(ctx, index, len(ctx.roles.servers), plan.table)
                     if cfg.data.placement == "server" else None)

    def held_bytes(self) -> dict[str, int]:
        """Bytes of parameters, optimizer state and buffers this server allocated."""
        state = sum(v.nbytes for k, v in self.optimizer.state().items() if k != "step")
        boxes = sum(m.nbytes for m in self.inbox + self.outbox) + self.acc.nbytes
        return {"params": self.theta.nbytes, "optimizer_state": state, "buffers": boxes}

    # -- the loop ------------------------------------------------------------------
    def run(self) -> dict:
        world = self.ctx.topo.world
        for i, w in enumerate(self.workers):
            if not self.stopped[i]:
                self.recvs[i] = world.Irecv(self.inbox[i].spec, w, TAG_PUSH)
        timers = self.ctx.timers
        n = self.n_workers
        while not all(self.stopped):
            self.hooks.signal_at(self.version)
            t0 = time.perf_counter()
            if self.data is None:
                done = self.poller.wait_some(self.recvs)
            else:   # data requests are answered as they come, between pushes
                done = self.poller.wait_some(self.recvs + self.data.recvs)
                for i in [i - n for i in done if i >= n]:
                    self.data.serve(i)
                done = [i for i in done if i < n]
            t1 = time.perf_counter()
            for i in done:
                self.held[i] = True
                self.counters["bytes_received"] += self.inbox[i].nbytes
            leaving = [i for i in done if self.inbox[i].ints[H_FLAGS] & F_LEAVE]
            for i in leaving:   # no gradient: answered with stop alone (see Worker._leave)
                self._consume_and_reply(i, stop=True)
            done = [i for i in done if i not in leaving]
            if self.mode == "bsp":
                self._bsp()
            else:
                for i in done:
                    self._async(i)
                self._release_ssp()
                self._periodic_async()
            timers["comm"] += t1 - t0
            timers["compute"] += time.perf_counter() - t1
            self.ctx.timeline.add("wait", t0, t1)
            self.ctx.timeline.add("apply+reply", t1, time.perf_counter())
        MPI.Request.Waitall(self.sends)
        if self.data is not None:
            self.data.finish(self.poller)
            self.counters["bytes_sent"] += self.data.sent_bytes
        if self.mode != "bsp":
            # At the end (of training, or after a signal) all servers checkpoint together
            # at the step the slowest worker completed.
            self.interrupted = bool(self.comm.allreduce(self.interrupted, op=MPI.MAX))
            if self.interrupted or (self.saver.enabled and self.cfg.checkpoint.final):
                self._save("signal" if self.interrupted else "final")
        self.progress.close()
        return {**self.counters, "dropped_from": dict(self.counters["dropped_from"]),
                "staleness": dict(self.counters["staleness"]),
                "lead": dict(self.counters["lead"]), "version": self.version,
                "epochs": self.epochs_logged, "steps_per_epoch": self.plan.steps_per_epoch,
                "batch": self.plan.batch, "samples": self.samples, "steps_done": 0,
                "interrupted": self.interrupted, "checkpoint": str(self.checkpoint_path)}

    # -- consistency models -----------------------------------------------------------
    def _bsp(self) -> None:
        """Drop late pushes; apply the current step once enough workers have pushed it."""
        for i in range(self.n_workers):
            if self.held[i] and self.inbox[i].ints[H_STEP] < self.version:
                self.counters["dropped"] += 1
                self.counters["dropped_from"][self.workers[i]] += 1
                self._consume_and_reply(i)
        while self.version < self.plan.total:
            ready = [i for i in range(self.n_workers)
                     if self.held[i] and self.inbox[i].ints[H_STEP] == self.version]
            if len(ready) < self.n_workers - self.cfg.ps.backup_workers:
                return
            acc = self.acc
            acc[:] = 0
            for i in ready:   # worker order: the same sum on every run
                self._add_push(i, acc)
            count = sum(int(self.inbox[i].ints[H_COUNT]) for i in ready)
            loss = sum(float(self.inbox[i].floats[H_LOSS]) for i in ready)
            self._apply(acc, count, loss, self.version)
            self._maybe_checkpoint(any(self.inbox[i].ints[H_FLAGS] & F_SIGNAL for i in ready))
            for i in ready:
                self._consume_and_reply(i)
            if self.interrupted:
                return

    def _maybe_checkpoint(self, flagged: bool) -> None:
        """bsp, after each step: the servers agree on checkpointing and stopping."""
        stop = flagged or signals.requested()
        vote = self.saver.time_due()
        if self.comm.Get_size() > 1:   # one tiny collective among servers per step
            stop, vote = self.comm.allreduce((stop, vote), op=_max_pair)
        final = self.version == self.plan.total and self.saver.enabled and self.cfg.checkpoint.final
        if stop or self.saver.due(self.version, bool(vote)) or final:
            self.interrupted = bool(stop)
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
        slowest = min(self.clock)
        while self.next_save <= slowest and self.next_save < self.plan.total:
            self._save("periodic", self.next_save)
            self.next_save += self.saver.every_steps

    def _save(self, reason: str, step: int | None = None) -> None:
        """Collective over the servers. bsp: at the step just applied; asp/ssp: at the
        steps the slowest worker completed (workers resume there together)."""
        t0 = time.perf_counter()
        if step is None:
            step = self.version if self.mode == "bsp" else min(self.clock)
        if self.mode != "bsp":
            step = self.comm.allreduce(step, op=MPI.MIN)
        self.checkpoint_path = self.saver.save_sharded(
            self.comm, self.index, self.lo, self.hi, self.theta, self.optimizer.state(),
            step, reason)
        self.ctx.timers["checkpoint"] += time.perf_counter() - t0
        self.ctx.timeline.add("checkpoint", t0, time.perf_counter())

    def _async(self, i: int) -> None:
        """asp/ssp: apply one worker's push now; reply now (asp) or when allowed (ssp)."""
        msg = self.inbox[i]
        if msg.ints[H_FLAGS] & F_SIGNAL or signals.requested():
            self.interrupted = True   # from now on every reply says stop
        step = int(msg.ints[H_STEP])
        self.counters["staleness"][self.version - int(msg.ints[H_BASE])] += 1
        if self.codec is None:
            grad = msg.payload
        else:
            grad = self.acc
            grad[:] = 0
            self._add_push(i, grad)
        self._apply(grad, int(msg.ints[H_COUNT]), float(msg.floats[H_LOSS]), step)
        self.clock[i] = step + 1
        if msg.ints[H_FLAGS] & F_LAST:
            self._consume_and_reply(i, stop=True)
        elif self.mode == "asp":
            self._consume_and_reply(i)
        else:
            self.held[i] = False   # applied; only the reply is held back
            self.waiting.append(i)

    def _release_ssp(self) -> None:
        if not self.waiting:
            return
        if self.interrupted:   # every reply says stop now: none is held back any longer
            for i in self.waiting:
                self._consume_and_reply(i)
            self.waiting = []
            return
        running = [c for c, s in zip(self.clock, self.stopped) if not s]
        slowest = min(running) if running else self.plan.total
        keep = []
        for i in self.waiting:
            # worker i wants to start step clock[i]; allowed when the slowest worker
            # has completed clock[i] - s steps
            if slowest >= self.clock[i] - self.cfg.ps.staleness:
                # the lead of the step this worker now starts over the slowest worker's
                # completed steps, logged so tests can check the bound from the summary
                self.counters["lead"][self.clock[i] - slowest] += 1
                self._reply(i)
                self._repost(i)
            else:
                keep.append(i)
        self.waiting = keep

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
            epoch = step // self.plan.steps_per_epoch
            lr = learning_rate(cfg.optimizer, step, epoch, self.plan.total)
            if self.mode != "bsp":
                # The rate refers to the global minibatch. An asynchronous push carries
                # one worker's share of it, so it moves the parameters by that share: the
                # W pushes of a step together move them as far as one synchronous step.
                lr *= count / self.plan.batch
            finish_gradient(grad, count, self.theta, cfg.model.l2, self.mask)
            if cfg.optimizer.clip_norm:
                # The global norm: each server's squared norm, summed over the servers
                # (bsp servers are in step; the config refuses clipping with several
                # asynchronous servers, which would pair different pushes).
                sq = sq_norm(grad)
                if self.comm.Get_size() > 1:
                    sq = self.comm.allreduce(sq)
                grad *= grad.dtype.type(clip_factor(sq, cfg.optimizer.clip_norm))
            # Only this server sees the problem: not agreed, so the CLI aborts the job.
            check_finite(loss_sum / count, grad, step, lr, agreed=False)
            self.optimizer.step(self.theta, grad, lr)
            if cfg.model.l1:
                soft_threshold(self.theta, lr * cfg.model.l1, self.mask)
            self.counters["updates"] += 1
            self.samples += count
        if self.mode == "bsp" or count > 0:
            self.version += 1
        self._account(loss_sum, count)

    def _account(self, loss_sum: float, count: int) -> None:
        """Rank 0 turns applied updates into epoch lines in metrics.jsonl."""
        if not self.is_logger:
            return
        self.epoch_loss += loss_sum
        self.epoch_rows += count
        self.applied_pushes += 1
        per_epoch = self.plan.steps_per_epoch * (1 if self.mode == "bsp" else self.n_workers)
        steps = self.applied_pushes if self.mode == "bsp" else self.applied_pushes // self.n_workers
        self.progress.update(min(steps, self.plan.total), loss_sum / max(count, 1))
        if self.applied_pushes % per_epoch == 0:
            self.epochs_logged += 1
            record = {"epoch": self.epochs_logged, "step": steps,
                      "train_loss": self.epoch_loss / max(self.epoch_rows, 1),
                      "epoch_time_s": time.perf_counter() - self.t_epoch,
                      "updates": self.counters["updates"], "dropped": self.counters["dropped"]}
            t0 = time.perf_counter()
            runfolder.append_metrics(self.ctx.run_dir, record)
            self.progress.epoch_line(record, self.cfg.train.epochs)
            self.ctx.timers["log"] += time.perf_counter() - t0
            self.epoch_loss, self.epoch_rows, self.t_epoch = 0.0, 0, time.perf_counter()

    def _consume_and_reply(self, i: int, stop: bool = False) -> None:
        self._reply(i, stop)
        self._repost(i)

    def _reply(self, i: int, stop: bool = False) -> None:
        stop = stop or self.interrupted or (self.mode == "bsp" and self.version >= self.plan.total)
        self.sends[i].Wait()   # the previous reply to this worker has been delivered
        out = self.outbox[i]
        out.ints[H_VERSION] = self.version
        out.ints[H_FLAGS] = (F_STOP if stop else 0) | (F_INTERRUPTED if self.interrupted else 0)
        out.payload[:] = self.theta
        self.sends[i] = self.ctx.topo.world.Isend(out.spec, self.workers[i], TAG_REPLY)
        self.counters["bytes_sent"] += out.nbytes
        if stop:
            self.stopped[i] = True

    def _repost(self, i: int) -> None:
        self.held[i] = False
        if not self.stopped[i]:
            self.recvs[i] = self.ctx.topo.world.Irecv(self.inbox[i].spec, self.workers[i],
                                                      TAG_PUSH)

    def _watchdog(self, idle: float) -> None:
        ps = self.cfg.ps
        if idle < ps.stall_timeout:
            self.warned = False
            return
        if self.mode == "bsp":
            missing = [w for i, w in enumerate(self.workers)
                       if not self.stopped[i] and not self.held[i]]
        else:
            missing = [w for i, w in enumerate(self.workers)
                       if not self.stopped[i] and i not in self.waiting]
        text = (f"server rank {self.ctx.topo.rank} has waited {idle:.0f} s at version "
                f"{self.version} for worker rank(s) {missing}")
        if idle >= ps.stall_abort:
            abort_job(f"{text}; giving up after ps.stall_abort = {ps.stall_abort:g} s", 3)
        if not self.warned:
            warn(text + f" (ps.stall_timeout = {ps.stall_timeout:g} s)", all_ranks=True)
            self.warned = True


def _max_pair(a, b, _datatype=None):
    """Element-wise max of two (stop, vote) pairs, for a pickled allreduce."""
    return (a[0] or b[0], max(a[1], b[1]))

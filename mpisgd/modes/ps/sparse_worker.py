"""A parameter-server worker of a sparse model: push the step's (key, gradient) pairs,
pull the parameters of the next step's keys.

The worker keeps the whole parameter vector as a cache, but only the keys of its next
minibatch are ever refreshed: each push names them (split by the servers' key ranges),
and the reply brings their values after the server applied the push (bsp: after the
whole step). So the parameters a step reads are as fresh as in dense PS mode, while
every message carries only the minibatch's unique keys.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from mpisgd.comm.p2p import (
    F_EVICTED,
    F_INTERRUPTED,
    F_LAST,
    F_PULL,
    F_PULL_NEXT,
    F_SIGNAL,
    F_STOP,
    H_BASE,
    H_COUNT,
    H_FLAGS,
    H_LOSS,
    H_STEP,
    H_VERSION,
    TAG_PULL,
    TAG_PUSH,
    TAG_REPLY,
    SparseMessage,
)
from mpisgd.comm.sparse_compress import SparseCompression
from mpisgd.context import Context
from mpisgd.modes.common import Hooks
from mpisgd.modes.ps.worker import Worker


class SparseWorker(Worker):
    """Worker ranks of a sparse model (no node aggregation: the config refuses it).
    ``capacity``: (most keys a push carries, most keys it pulls)."""

    def __init__(self, ctx: Context, theta: np.ndarray, ranges: list[tuple[int, int]],
                 start: int, plan, capacity: tuple[int, int]):
        self.ctx, self.ranges, self.start, self.group = ctx, ranges, start, None
        self.servers = ctx.roles.servers
        self.plan = plan
        self.sync = ctx.cfg.ps.consistency == "bsp"
        self.pusher = True
        push, pull = capacity
        self.push = [SparseMessage(push, pull, push, theta.dtype) for _ in ranges]
        self.reply = [SparseMessage(0, 0, pull, theta.dtype) for _ in ranges]
        self.pulls = [SparseMessage(0, pull, 0, theta.dtype) for _ in ranges]
        self.feedback = [None] * len(ranges)
        # comm.compression: one compressor for every server's keys (they are disjoint), its
        # lazy error-feedback residual over the model's width (mpisgd.comm.sparse_compress)
        comm = ctx.cfg.comm
        self.compression = None if comm.compression == "none" else SparseCompression(
            comm.compression, theta.size, theta.dtype, comm.topk_ratio, ctx.cfg.train.seed,
            ctx.topo.rank, comm.error_feedback)
        self.theta = theta
        self.bounds = np.array([lo for lo, _ in ranges] + [ranges[-1][1]], dtype=np.int64)
        # The gradient travels as pairs (plan.last); the failure hooks write into a scratch
        # value, which _exchange carries over into the push.
        self.grad = self.out = np.zeros(1, dtype=theta.dtype)
        self.hooks = Hooks(ctx.cfg.debug, ctx.topo.rank, ctx.nan_fired)
        self.counters = {"bytes_sent": 0, "bytes_received": 0, "steps_done": 0,
                         "refreshes": 0}   # pull-only exchanges after a dropped push

    def _exchange(self, step: int, version: int, grad: np.ndarray, count: int, loss: float,
                  signal: bool) -> tuple[int, bool, bool]:
        """Push this step's pairs to each server with the next step's keys; write the
        pulled values into the parameters; (version, stop, interrupted).

        bsp with backup workers: a push that came too late was dropped and the worker
        goes on at the servers' version, whose keys it has not pulled: it pulls them
        (a pull-only message) before computing that step."""
        keys, vals = self.plan.last
        if np.isnan(self.out[0]):   # debug.fail_kind = "nan": the hook's NaN, into the push
            vals = vals.copy()
            vals[0], self.out[0] = np.nan, 0
        new, stop, interrupted = self._send_pairs(step, version, keys, vals, count, loss, signal,
                                                  step + 1)
        while self.sync and not stop and step + 1 < new < self.plan.total:
            step = new - 1
            self.counters["refreshes"] += 1
            new, stop, flagged = self._send_pairs(new, version, keys[:0], vals[:0], 0, 0.0,
                                                  signal, new)
            interrupted |= flagged
        return new, stop, interrupted

    def _send_pairs(self, step: int, version: int, keys: np.ndarray, vals: np.ndarray,
                    count: int, loss: float, signal: bool, pull_step: int):
        """One exchange with every server: ``keys``/``vals`` pushed (none: a pull-only
        message), the keys of ``pull_step`` pulled; (version, stop, interrupted).

        A push of the step's gradient goes first, and the keys of the next step follow in
        a second message: the worker finds them while the server applies the push, off
        the step's critical path (the server needs them only to reply)."""
        world = self.ctx.topo.world
        last_step = step + 1 >= self.plan.total
        last = (not self.sync) and last_step
        only_pull = count == 0 and self.sync and pull_step == step
        follow = not only_pull and pull_step < self.plan.total
        pull = (np.empty(0, np.int64) if pull_step >= self.plan.total or follow
                else self.plan.keys_for(pull_step))
        flags = ((F_PULL if only_pull else (F_LAST if last else 0)) | (F_SIGNAL if signal else 0)
                 | (F_PULL_NEXT if follow else 0))
        cut_k = np.searchsorted(keys, self.bounds)
        cut_p = np.searchsorted(pull, self.bounds)
        requests = []
        for s, (msg, reply, server) in enumerate(zip(self.push, self.reply, self.servers)):
            msg.ints[H_STEP], msg.ints[H_COUNT] = step, count
            msg.ints[H_FLAGS] = flags
            msg.ints[H_BASE] = version
            msg.floats[H_LOSS] = loss
            self._fill(msg, step, keys[cut_k[s]:cut_k[s + 1]], pull[cut_p[s]:cut_p[s + 1]],
                       vals[cut_k[s]:cut_k[s + 1]])
            requests.append(world.Irecv(reply.spec, server, TAG_REPLY))
            requests.append(world.Isend(msg.send_spec(), server, TAG_PUSH))
        self.counters["bytes_sent"] += sum(m.nbytes for m in self.push)
        if follow:
            pull = self.plan.keys_for(pull_step)
            cut_p = np.searchsorted(pull, self.bounds)
            for s, (msg, server) in enumerate(zip(self.pulls, self.servers)):
                msg.fill(pull[:0], pull[cut_p[s]:cut_p[s + 1]], vals[:0])
                requests.append(world.Isend(msg.send_spec(), server, TAG_PULL))
            self.counters["bytes_sent"] += sum(m.nbytes for m in self.pulls)
        MPI.Request.Waitall(requests)
        return self._replies(pull, cut_p)

    def _fill(self, msg: SparseMessage, step: int, keys: np.ndarray, pull: np.ndarray,
              vals: np.ndarray) -> None:
        """One server's part of the push, its values compressed under comm.compression."""
        if self.compression is None or not keys.size:
            msg.fill(keys, pull, vals)
            return
        keys, payload = self.compression.compress(keys, vals, step)
        msg.fill_encoded(keys, pull, keys.size, payload)

    def _replies(self, pull: np.ndarray, cut_p: np.ndarray) -> tuple[int, bool, bool]:
        """Write the pulled values into the parameters; (version, stop, interrupted)."""
        if any(reply.ints[H_FLAGS] & F_EVICTED for reply in self.reply):
            self._evicted()
        stops = [bool(reply.ints[H_FLAGS] & F_STOP) for reply in self.reply]
        if any(stops) and not all(stops):
            self._leave([i for i, s in enumerate(stops) if not s])
        stop = interrupted = False
        versions = []
        for s, reply in enumerate(self.reply):
            got = reply.vals()
            if got.size:   # a leave's or a stop's reply may carry nothing
                self.theta[pull[cut_p[s]:cut_p[s + 1]]] = got
            versions.append(int(reply.ints[H_VERSION]))
            stop |= bool(reply.ints[H_FLAGS] & F_STOP)
            interrupted |= bool(reply.ints[H_FLAGS] & F_INTERRUPTED)
        self.counters["bytes_received"] += sum(m.nbytes for m in self.reply)
        return max(versions), stop, interrupted

    def _leave(self, indices: list[int]) -> None:
        """The dense worker's goodbye, with empty pairs (the server reads no payload)."""
        empty = np.empty(0, np.int64)
        for i in indices:
            self.push[i].fill(empty, empty, self.theta[:0])
        super()._leave(indices)

    def held_bytes(self) -> dict[str, int]:
        residual = self.compression.residual if self.compression is not None else None
        return {"params": self.theta.nbytes,
                "buffers": sum(m.raw.nbytes for m in self.push + self.reply + self.pulls)
                + (residual.nbytes if residual is not None else 0)}

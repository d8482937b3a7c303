"""The parameter server of a sparse model: pushes and replies carry keys, not ranges.

A worker pushes the (key, gradient) pairs of its step that fall in this server's range
and names the keys of its next minibatch there; the server applies the step to the
pushed keys only (a lazy optimizer, :mod:`mpisgd.optim_sparse`) and replies with the
parameters of the named keys. So a message's size follows the minibatch's unique keys,
never the model's width, which is what lets a server hold 10^8 parameters and still
answer a push in microseconds. Consistency (bsp, asp, ssp), checkpoints, epoch lines and
the stall watchdog are the dense server's (:class:`~mpisgd.modes.ps.server.Server`).
"""

from __future__ import annotations

import numpy as np

from mpisgd.comm.p2p import (
    F_INTERRUPTED,
    F_PULL_NEXT,
    F_STOP,
    H_FLAGS,
    H_NVALS,
    H_STEP,
    H_VERSION,
    TAG_PULL,
    TAG_REPLY,
    SparseMessage,
)
from mpisgd.comm.sparse_compress import SparseCompression
from mpisgd.kernels.merge import merge_runs
from mpisgd.modes.common import check_finite
from mpisgd.modes.ps.server import Server
from mpisgd.optim_sparse import make_sparse_optimizer


def merge_pairs(keys: list[np.ndarray], vals: list[np.ndarray]) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """Sum the pushes' (key, value) runs by key, in push order within a key (the same sum
    on every run); keys whose sum is exactly 0 are dropped, as in allreduce mode."""
    if len(keys) == 1:   # one push: its keys are already sorted and unique
        keep = vals[0] != 0
        return keys[0][keep], vals[0][keep]
    return merge_runs(np.concatenate(keys), np.concatenate(vals), [k.size for k in keys])


class SparseServer(Server):
    """A server of keys [lo, hi) of a sparse model; ``capacity``: (most keys a push
    carries, most keys it pulls), the same bound the workers use."""

    def __init__(self, ctx, theta, lo, hi, index, comm, start, opt_state, workers, plan,
                 capacity: tuple[int, int]):
        self.capacity = capacity
        self.keys_applied = 0
        super().__init__(ctx, theta, lo, hi, index, comm, start, opt_state, workers, plan)

    def _make_state(self, opt_state: dict | None) -> None:
        self.optimizer = make_sparse_optimizer(self.cfg.optimizer, self.hi - self.lo,
                                               self.theta.dtype, self.lo)
        if opt_state:
            self.optimizer.load_state(opt_state)

    def _make_boxes(self) -> None:
        push, pull = self.capacity
        dtype = self.theta.dtype
        self.codec = None   # the dense codec; sparse pushes are decoded by self.decoder
        comm = self.cfg.comm
        self.decoder = None if comm.compression == "none" else SparseCompression(
            comm.compression, 0, dtype, comm.topk_ratio, self.cfg.train.seed, 0, False)
        self.inbox = [SparseMessage(push, pull, push, dtype) for _ in self.workers]
        self.outbox = [SparseMessage(0, 0, pull, dtype) for _ in self.workers]
        self.pullbox = [SparseMessage(0, pull, 0, dtype) for _ in self.workers]
        self.acc = self.scratch = self.theta[:0]

    def held_bytes(self) -> dict[str, int]:
        boxes = sum(m.raw.nbytes for m in self.inbox + self.outbox + self.pullbox)
        return {"params": self.theta.nbytes, "optimizer_state": self.optimizer.held_bytes(),
                "buffers": boxes}

    def _apply_ready(self, ready: list[int], count: int, loss: float) -> None:
        keys, vals = merge_pairs([self.inbox[i].keys() for i in ready],
                                 [self._vals(i) for i in ready])
        self._apply_sparse(keys, vals.astype(self.theta.dtype, copy=False), count, loss,
                           self.policy.version)

    def _apply_push(self, i: int, step: int, count: int, loss: float) -> None:
        msg = self.inbox[i]
        self._apply_sparse(msg.keys(), self._vals(i).copy(), count, loss, step)

    def _vals(self, i: int) -> np.ndarray:
        """Worker i's pushed values, decoded when compressed (comm.compression)."""
        msg = self.inbox[i]
        if not msg.encoded():
            return msg.vals()
        return self.decoder.decode(msg.payload(), int(msg.ints[H_NVALS]),
                                   int(msg.ints[H_STEP]))

    def _apply_sparse(self, keys: np.ndarray, vals: np.ndarray, count: int, loss_sum: float,
                      step: int) -> None:
        """One lazy optimizer step on ``keys`` (global, in this range) from a gradient sum
        over ``count`` rows; the dense server's rules (rate, L2, clipping, checks)."""
        cfg = self.cfg
        if count > 0:
            lr = self._rate(step, count)
            vals *= vals.dtype.type(1.0) / vals.dtype.type(count)
            local = keys - self.lo
            if cfg.model.l2:
                mask = self.mask[local]
                vals[mask] += vals.dtype.type(cfg.model.l2) * self.theta[local[mask]]
            self._clip(vals)
            check_finite(loss_sum / count, vals, step, lr, agreed=False)
            self.optimizer.step(self.theta, keys, vals, lr)
            if cfg.model.l1 and keys.size:
                w = self.theta[local]
                shrunk = np.sign(w) * np.maximum(np.abs(w) - w.dtype.type(lr * cfg.model.l1), 0)
                self.theta[local] = np.where(self.mask[local], shrunk, w)
            self.counters["updates"] += 1
            self.keys_applied += keys.size
            self.samples += count
        self.log.add(loss_sum, count)

    def _evict(self, i: int) -> None:
        self._pull_list(i)   # the worker waits until its message of keys is taken
        self.outbox[i].fill(self.inbox[i].pull()[:0], self.inbox[i].pull()[:0],
                            self.theta[:0])
        super()._evict(i)

    def _pull_list(self, i: int) -> np.ndarray:
        """The keys worker i's push asks for: in the push, or in the message after it."""
        pull = self.inbox[i].pull()
        if self.inbox[i].ints[H_FLAGS] & F_PULL_NEXT:   # the keys follow the push
            box = self.pullbox[i]
            self._receive_serving(self.ctx.topo.world.Irecv(box.spec, self.workers[i],
                                                            TAG_PULL))
            self.inbox[i].ints[H_FLAGS] &= ~F_PULL_NEXT   # taken once
            self.counters["bytes_received"] += box.nbytes
            pull = box.pull()
        return pull

    def _receive_serving(self, request) -> None:
        """Wait for ``request``, answering data requests meanwhile (server placement):
        the worker may be finding those keys in chunks it is still fetching from this
        server, or from another one that waits for that worker's keys in turn."""
        if self.data is None:
            request.Wait()
            return
        while True:
            done = self.poller.wait_some([request] + self.data.recvs)
            for k in done:
                if k > 0:
                    self.data.serve(k - 1)
            if 0 in done:
                return

    def _send(self, i: int, stop: bool) -> None:
        """Reply with the parameters of the keys worker i's push asked for."""
        interrupted = self.policy.interrupted
        self.sends[i].Wait()
        out = self.outbox[i]
        out.ints[H_VERSION] = self.policy.version
        out.ints[H_FLAGS] = (F_STOP if stop else 0) | (F_INTERRUPTED if interrupted else 0)
        pull = self._pull_list(i)
        out.fill(pull[:0], pull[:0], self.theta[pull - self.lo])
        self.sends[i] = self.ctx.topo.world.Isend(out.send_spec(), self.workers[i], TAG_REPLY)
        self.counters["bytes_sent"] += out.nbytes
        self._repost(i)

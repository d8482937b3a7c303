"""Where a worker's share of each global step comes from: its in-memory block
(``data.placement = "partition"``) or chunks read from storage (``"storage"``).

Both give the training loops one call, ``gradient(step, theta, grad)`` -> (loss sum, rows,
global row ids), so allreduce and parameter-server modes do not care where rows live.
"""

from __future__ import annotations

import time

import numpy as np

from mpisgd import kernels
from mpisgd.context import Context
from mpisgd.data.chunks import (
    assign,
    chunk_table,
    chunks_per_step,
    epoch_order,
    locality_order,
    step_chunks,
)
from mpisgd.data.partition import holdout_mask
from mpisgd.data.source import ChunkReader
from mpisgd.modes.claims import BalancedCounter
from mpisgd.modes.common import StepPlan, epoch_length, total_steps
from mpisgd.modes.dataserve import ServerChunkSource, owners


class RowBatches:
    """Partition placement: the worker's rows of every global minibatch, from memory."""

    def __init__(self, ctx: Context, plan: StepPlan):
        self.ctx, self.plan = ctx, plan
        self.steps_per_epoch, self.total, self.batch = plan.steps_per_epoch, plan.total, plan.batch
        self.slow = _slowdown(ctx)
        self.wait_s = 0.0
        # X and y are checked once here; a step checks only its rows (kernels.BoundLossGrad)
        self.loss_grad = kernels.BoundLossGrad(ctx.spec, ctx.X, ctx.y)
        self.row0 = ctx.row0
        self.trace = ctx.cfg.debug.trace_rows

    def gradient(self, step: int, theta: np.ndarray, grad: np.ndarray):
        """(loss sum, rows, their global ids when rows are traced, else None)."""
        idx = self.plan.rows_for(step)
        if self.slow:   # test hook: this rank computes slow_factor x slower
            t0 = time.perf_counter()
            loss = self.loss_grad(idx, theta, grad)
            time.sleep(self.slow * (time.perf_counter() - t0))
        else:
            loss = self.loss_grad(idx, theta, grad)
        return loss, idx.size, (idx + self.row0 if self.trace else None)

    def report(self) -> dict:
        return {}

    def id_epochs(self, step: int) -> np.ndarray:
        """The epoch of each row id the last ``gradient`` returned."""
        return np.full(self.plan.rows_for(step).size, step // self.steps_per_epoch,
                       dtype=np.int64)

    def requeue_dead(self, worker: int, applied: int, horizon: int) -> tuple[int, int]:
        """A dead worker's partition is its own: nothing to hand over."""
        return 0, 0

    def rows_per_epoch(self) -> int:
        """This rank's training rows (lost for the rest of the run if it dies)."""
        return int(self.plan.train_rows.size)

    def rows_missed(self, worker: int, first: int) -> int:
        return 0   # counted from rows_per_epoch (modes.ps.deaths)

    def finish_reads(self) -> None:
        """Nothing in flight."""

    def close(self) -> None:
        """Nothing to release."""


def _slowdown(ctx: Context) -> float:
    """Test hook: extra sleep per second of compute on ``debug.slow_rank`` (factor - 1)."""
    debug = ctx.cfg.debug
    return debug.slow_factor - 1.0 if debug.slow_rank == ctx.topo.rank else 0.0


def make_batches(ctx: Context, plan: StepPlan) -> Batches:
    """Collective over the world: the job's batches (``plan``: the partition's StepPlan)."""
    if ctx.cfg.data.placement == "partition":
        return RowBatches(ctx, plan)
    nodes = np.array(ctx.topo.world.allgather(ctx.topo.node_index), dtype=np.int64)
    workers = np.asarray(ctx.roles.workers, dtype=np.int64)
    return ChunkBatches(ctx, ctx.roles.worker_index(ctx.topo.rank), nodes[workers])


class ChunkBatches:
    """Storage or server placement: the chunks of each step that ``data.assign`` gives this
    worker, read with retries and a background prefetch (data.chunks, data.source), or
    asked of the parameter server that holds them (modes.dataserve).

    Collective over the world at creation and :meth:`close` (the balanced counter's window).
    """

    def __init__(self, ctx: Context, worker: int, worker_nodes: np.ndarray):
        cfg, info = ctx.cfg, ctx.info
        self.ctx, self.worker, self.worker_nodes = ctx, worker, worker_nodes
        self.policy = cfg.data.assign
        self.table = chunk_table(info.offsets, cfg.data.chunk_rows, info.nodes)
        self.per_step = chunks_per_step(self.table.n, cfg.train.batch_size, cfg.data.chunk_rows)
        # nominal rows per step: per_step chunks of chunk_rows
        self.steps_per_epoch, self.batch = epoch_length(ctx)
        self.total = total_steps(cfg.train.epochs, cfg.train.max_steps, self.steps_per_epoch)
        # Held-out rows stay out of training: the same per-row rule as partition placement.
        self.fraction = 0.0 if cfg.data.test else cfg.data.test_fraction
        self.seed, self.shuffle = cfg.train.seed, cfg.train.shuffle
        self.reader = None
        # Storage rows come raw from the files, freshly read each time: standardised as
        # read. Server placement's servers standardise their chunks once (dataserve).
        self.scaler = ctx.scaler if cfg.data.placement == "storage" else None
        self.chunk_node = self.table.node   # where each chunk is stored (-1: shared)
        if cfg.data.placement == "server":
            owner = owners(self.table.n, len(ctx.roles.servers))
            rank_nodes = np.asarray(ctx.topo.world.allgather(ctx.topo.node_index))
            self.chunk_node = rank_nodes[np.asarray(ctx.roles.servers)[owner]]
            if worker >= 0:
                self.reader = ServerChunkSource(ctx, owner, self.table)
        elif worker >= 0:
            self.reader = ChunkReader(info, cfg.data, cfg.debug, ctx.topo.rank)
        # The reader's live counters (kept after it is closed).
        self._stats = self.reader.stats if self.reader is not None else {}
        self._skipped = self.reader.skipped if self.reader is not None else []
        # Going on through a worker's death, balanced assignment records who took each
        # chunk, so the dead worker's unapplied chunks can be handed to the others.
        self.counter = BalancedCounter(
            ctx.topo.world, self.total, self.per_step, len(ctx.roles.workers),
            tracked=cfg.ps.on_worker_failure == "continue" and cfg.mode == "ps") \
            if self.policy == "balanced" else None
        self.epochs: list[np.ndarray] = []   # the epoch of each row of the last step
        self.slow = _slowdown(ctx)
        self.node = worker_nodes[worker] if worker >= 0 else -1
        self.local = self.remote = 0
        self._order_epoch, self._order = -1, None
        self._scratch = None   # a dense gradient's buffer, made at the first step
        self._rows: dict[int, np.ndarray] = {}
        self.wait_s = 0.0

    # -- which chunks --------------------------------------------------------------
    def step_set(self, step: int) -> np.ndarray:
        """Every chunk of global ``step``, in step order (the same on every rank)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._order_epoch:
            self._order_epoch = epoch
            self._order = (locality_order(self.table, self.worker_nodes, self.seed, epoch,
                                          self.shuffle, self.per_step)
                           if self.policy == "locality" else
                           epoch_order(self.table.n, self.seed, epoch, self.shuffle))
        return step_chunks(self._order, self.per_step, k)

    def mine(self, step: int) -> np.ndarray:
        """This worker's chunks of ``step`` (static, random or locality)."""
        return assign(self.policy, self.step_set(step), self.table, self.worker_nodes,
                      self.worker, self.seed, step)

    def _claims(self, step: int):
        """(chunk, its epoch) for the chunks this worker computes in ``step``, prefetching
        one ahead. A leftover of a dead worker (balanced, tracked) is of its own epoch."""
        t = self.table
        epoch = step // self.steps_per_epoch
        if self.counter is not None:
            chunks = self.step_set(step)
            nxt = self._take(step, chunks)
            while nxt is not None:
                cur = nxt
                nxt = self._take(step, chunks)   # claim the next before computing this one
                if nxt is not None:
                    self.reader.request(nxt[0], t.lo[nxt[0]], t.hi[nxt[0]])
                yield cur
            return
        mine = self.mine(step)
        self.reader.forget(set(int(c) for c in mine))
        following = list(mine[1:])
        if step + 1 < self.total:   # the next step's first chunk, read during this one's last
            following += list(self.mine(step + 1)[:1])
        for cur, nxt in zip(mine, following + [None]):
            if nxt is not None:
                self.reader.request(int(nxt), t.lo[nxt], t.hi[nxt])
            yield int(cur), epoch

    def _take(self, step: int, chunks: np.ndarray) -> tuple[int, int] | None:
        """Balanced: the next chunk for this worker (a leftover first), or None."""
        code = self.counter.claim_leftover(step, self.worker)
        if code is not None:
            return code % self.table.n, code // self.table.n
        j = self.counter.claim(step, self.worker)
        return (int(chunks[j]), step // self.steps_per_epoch) if j < chunks.size else None

    def rows_per_epoch(self) -> int:
        return 0   # rows are not this rank's own: see rows_missed

    def rows_missed(self, worker: int, first: int) -> int:
        """Training rows a dead worker would have computed from step ``first`` on:
        none under balanced assignment (the others take its chunks); its chunks of
        every later step under static, random or locality assignment."""
        if self.policy == "balanced":
            return 0
        rows = 0
        for step in range(first, self.total):
            chunks = assign(self.policy, self.step_set(step), self.table, self.worker_nodes,
                            worker, self.seed, step)
            rows += sum(self._train_rows(int(c)).size for c in chunks)
        return rows

    def id_epochs(self, step: int) -> np.ndarray:
        """The epoch of each row id the last ``gradient`` returned (a dead worker's
        leftover chunk counts in its own epoch)."""
        return np.concatenate(self.epochs) if self.epochs else np.empty(0, dtype=np.int64)

    def requeue_dead(self, worker: int, applied: int, horizon: int) -> tuple[int, int]:
        """Server rank 0, balanced and tracked: hand a dead worker's unapplied chunks to
        the others; (chunks queued, chunks lost). Other placements lose nothing here."""
        if self.counter is None or not self.counter.tracked or self.ctx.topo.rank != 0:
            return 0, 0
        return self.counter.requeue_dead(worker, applied, horizon, self.step_set,
                                         self.steps_per_epoch, self.table.n)

    # -- the gradient ------------------------------------------------------------------
    def gradient(self, step: int, theta: np.ndarray, grad: np.ndarray):
        ctx, t = self.ctx, self.table
        grad[:] = 0
        loss, count, ids = 0.0, 0, []
        if self._scratch is None:
            self._scratch = np.empty(ctx.n_params, dtype=ctx.dtype)
        waited = self.reader.stats["wait_s"]
        self.epochs = []
        for c, epoch in self._claims(step):
            t0 = time.perf_counter()
            data = self._fetch(c)
            if data is not None:   # None: skipped after its retries (counted by the reader)
                X, y = data
                if self.scaler is not None:
                    self.scaler.transform(X, out=X)
                rows = self._train_rows(c)
                loss += kernels.spec_loss_grad(ctx.spec, X, y, rows, theta, self._scratch)
                grad += self._scratch
                count += rows.size
                ids.append(rows + t.lo[c])
                self.epochs.append(np.full(rows.size, epoch, dtype=np.int64))
            if self.slow:   # test hook: this rank reads and computes slow_factor x slower
                time.sleep(self.slow * (time.perf_counter() - t0))
        self.wait_s += self.reader.stats["wait_s"] - waited
        return loss, count, (np.concatenate(ids) if ids else np.empty(0, dtype=np.int64))

    def _fetch(self, c: int):
        """Chunk c's (X, y), or None when skipped; counted as read on its node or not."""
        data = self.reader.get(c, self.table.lo[c], self.table.hi[c])
        if self.chunk_node[c] >= 0 and self.chunk_node[c] == self.node:
            self.local += 1
        else:
            self.remote += 1
        return data

    def _train_rows(self, c: int) -> np.ndarray:
        """Chunk c's training rows (offsets within it), hashed once and kept: the same in
        every epoch, and a worker sees the same chunks again."""
        rows = self._rows.get(c)
        if rows is None:
            t = self.table
            held = holdout_mask(int(t.lo[c]), int(t.hi[c]), self.fraction, self.seed)
            rows = self._rows[c] = np.flatnonzero(~held).astype(np.int64)
        return rows

    def report(self) -> dict:
        """This worker's data counters for the run summary (after :meth:`close`)."""
        return {**self._stats, "local_chunks": self.local, "remote_chunks": self.remote,
                "skipped": list(self._skipped)}

    def finish_reads(self) -> None:
        """This worker is done reading (not collective): stop the prefetch thread; under
        server placement, drain the answers in flight and say bye to the servers, which
        must happen before any collective the servers would wait in."""
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def close(self) -> None:
        """Collective over the world (the balanced counter's window)."""
        self.finish_reads()
        if self.counter is not None:
            self.counter.free()


# What the training loops take: either placement, the same calls.
Batches = RowBatches | ChunkBatches

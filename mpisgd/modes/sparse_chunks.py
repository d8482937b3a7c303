"""CSR rows read chunk by chunk during training: ``data.placement = "storage"`` (workers
read their chunks from the shard files) and ``"server"`` (the parameter servers hold the
chunks and send them), for sparse models.

The chunks of a step, their assignment (static, random, locality, balanced), the reads
with retries and the servers' answers are dense placement's
(:class:`~mpisgd.modes.batches.ChunkBatches`); what differs is the step: the chunks a
worker gets are joined into one CSR minibatch, whose gradient is taken as (key, value)
pairs like a partition's rows (:class:`~mpisgd.modes.sparse_rows.SparseRowBatches`). A PS
worker asks for the keys of its next step while the servers apply this one
(``keys_for``): that step's chunks are fetched and joined then, and its gradient reuses
them.
"""

from __future__ import annotations

import numpy as np

from mpisgd import kernels
from mpisgd.context import Context
from mpisgd.data.csr_read import CsrReader
from mpisgd.modes.batches import ChunkBatches
from mpisgd.modes.common import StepPlan
from mpisgd.modes.sparse_rows import SparseRowBatches, expand_keys, flat_keys


class Batch:
    """One step's chunks joined: CSR rows, labels, the training rows among them, their
    global ids and the epoch each belongs to (a dead worker's leftover chunk: its own)."""

    def __init__(self, step: int, n_features: int, parts: list):
        self.step = step
        blocks = [p[1] for p in parts]
        sizes = np.array([len(b) for b in blocks], dtype=np.int64)
        nnz = np.array([b.nnz for b in blocks], dtype=np.int64)
        first = np.concatenate(([0], np.cumsum(sizes)))
        start = np.concatenate(([0], np.cumsum(nnz)))
        indptr = np.concatenate([[0]] + [b.indptr[1:] + s for b, s in zip(blocks, start)])
        if blocks:
            indices = np.concatenate([b.indices for b in blocks])
            values = np.concatenate([b.values for b in blocks])
            self.y = np.concatenate([p[2] for p in parts])
        else:   # no chunk this step: an empty minibatch of the right types
            indices, values, self.y = np.empty(0, np.int64), np.empty(0, np.float64), None
        self.X = kernels.sparse.CSR(indptr.astype(np.int64), indices, values, n_features) \
            if blocks else None
        self.rows = np.concatenate([p[3] + f for p, f in zip(parts, first)] or
                                   [np.empty(0, np.int64)])
        self.ids = np.concatenate([p[3] + p[4] for p in parts] or [np.empty(0, np.int64)])
        self.epochs = np.concatenate([np.full(p[3].size, p[5], np.int64) for p in parts] or
                                     [np.empty(0, np.int64)])
        self.keys = None   # kernels.sparse.Keys of rows, once found


class SparseChunkBatches(ChunkBatches):
    """Storage or server placement of CSR rows (collective at creation and close)."""

    def __init__(self, ctx: Context, worker: int, worker_nodes: np.ndarray):
        super().__init__(ctx, worker, worker_nodes)
        self.trace = ctx.cfg.debug.trace_rows
        self.last: tuple[np.ndarray, np.ndarray] | None = None
        self._batch: Batch | None = None
        self._most = _most_keys(ctx, self.table, self.per_step)

    def _load(self, step: int) -> Batch:
        """This worker's chunks of ``step``, fetched and joined (once per step)."""
        if self._batch is not None and self._batch.step == step:
            return self._batch
        t, parts = self.table, []
        waited = self.reader.stats["wait_s"]
        for c, epoch in self._claims(step):
            data = self._fetch(c)
            if data is not None:   # None: skipped after its retries (counted by the reader)
                parts.append((c, data[0], data[1], self._train_rows(c), int(t.lo[c]), epoch))
        self.wait_s += self.reader.stats["wait_s"] - waited
        self._batch = Batch(step, self.ctx.n_features, parts)
        return self._batch

    def keys_for(self, step: int) -> np.ndarray:
        """The flat parameter indices the rows of ``step`` touch (a PS worker pulls them)."""
        ctx, b = self.ctx, self._load(step)
        if b.X is None:
            keys = np.empty(0, np.int64)
        else:
            b.keys = kernels.sparse.unique_keys(b.X.indptr, b.X.indices, b.rows)
            keys = b.keys.keys
        return expand_keys(ctx.n_features, ctx.n_classes if ctx.model == "softmax" else 1,
                           keys)

    def gradient(self, step: int, theta: np.ndarray, grad: np.ndarray):
        """(loss sum, rows, their global ids when traced); the gradient in :attr:`last`."""
        ctx, b = self.ctx, self._load(step)
        if b.X is None or b.rows.size == 0:
            C = ctx.n_classes if ctx.model == "softmax" else 1
            self.last = (expand_keys(ctx.n_features, C, np.empty(0, np.int64)),
                         np.zeros(C, dtype=ctx.dtype))
            return 0.0, 0, b.ids
        g = kernels.sparse.loss_grad_theta(ctx.model, b.X, b.y, b.rows, theta, b.keys)
        self.last = flat_keys(ctx.model, ctx.n_features, g)
        return g.loss, b.rows.size, (b.ids if self.trace else None)

    def id_epochs(self, step: int) -> np.ndarray:
        return self._load(step).epochs

    def max_keys(self) -> int:
        return self._most


def _most_keys(ctx: Context, table, per_step: int) -> int:
    """A bound on the flat indices one step touches: the step's chunks (at most
    ``per_step``) times the most non-zeros of any chunk, per output, plus the biases.
    The same on every rank (from the shards' indptr at the chunks' bounds)."""
    info, most = ctx.info, 0
    with CsrReader(info) as reader:
        for shard in range(len(info.shards)):
            lo = info.offsets[shard]
            mine = (table.lo >= lo) & (table.lo < lo + info.rows[shard])
            if mine.any():
                ip = reader.indptr(shard)
                most = max(most, int((ip[table.hi[mine] - lo] - ip[table.lo[mine] - lo]).max()))
    C = ctx.n_classes if ctx.model == "softmax" else 1
    return min(ctx.n_params, per_step * most * C + C)


def make_sparse_batches(ctx: Context, plan: StepPlan):
    """Collective over the world: a sparse job's batches, by ``data.placement``."""
    if ctx.cfg.data.placement == "partition":
        return SparseRowBatches(ctx, plan)
    nodes = np.array(ctx.topo.world.allgather(ctx.topo.node_index), dtype=np.int64)
    workers = np.asarray(ctx.roles.workers, dtype=np.int64)
    return SparseChunkBatches(ctx, ctx.roles.worker_index(ctx.topo.rank), nodes[workers])

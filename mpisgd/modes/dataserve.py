"""``data.placement = "server"``: parameter servers hold the split dataset and send the
chunks workers ask for, beside the parameters.

Server s holds the chunks of its block of the chunk table (``owner``), read once at
start through a :class:`~mpisgd.data.source.ChunkReader` (so with retries). A worker asks
for chunk c with a one-int64 request (``TAG_DATA_REQ``) to its owner and receives the
chunk's rows as one byte message (``TAG_DATA``: X then y). Requests are non-blocking, so
the next chunk is asked for while this one is computed (the prefetch of storage
placement). The server answers requests inside its event loop, between pushes.

A CSR chunk travels as its indptr (from 0, rows + 1 int64), indices, values, then y; its
size depends on its non-zeros, so a worker cannot post a receive of the right size in
advance: it receives a server's answers in the order it asked for them (one server
answers one worker in order), probing each for its size.

Ending: when a worker is done it sends ``BYE`` (-1) to every server; a server keeps
answering until every worker said bye. Requests a worker sent before its bye (a prefetch
for a step it never ran) are therefore answered, and the worker receives and drops them
before saying bye, so no message is ever left unmatched.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
from mpi4py import MPI

from mpisgd.context import Context
from mpisgd.data.csr import CsrBlock
from mpisgd.data.partition import block_range
from mpisgd.data.source import ChunkReader

TAG_DATA_REQ = 103   # worker -> server: int64 chunk id (or BYE)
TAG_DATA = 104       # server -> worker: the chunk's X rows then y, as bytes
BYE = -1


def owners(table_n: int, n_servers: int) -> np.ndarray:
    """The server index holding each chunk: contiguous blocks of the chunk table."""
    out = np.empty(table_n, dtype=np.int64)
    for s in range(n_servers):
        lo, hi = block_range(table_n, n_servers, s)
        out[lo:hi] = s
    return out


def _row_bytes(info) -> int:
    return info.n_features * info.dtype.itemsize + info.y_dtype.itemsize


def _pack(ctx: Context, X, y: np.ndarray) -> np.ndarray:
    """A chunk as the bytes a worker receives: X rows (CSR: indptr, indices, values)
    then y."""
    if ctx.info.layout == "csr":
        parts = (X.indptr, X.indices, X.values, y)
    else:
        if ctx.scaler is not None:   # once here, not on every worker's every read
            ctx.scaler.transform(X, out=X)
        parts = (X.reshape(-1), y)
    return np.concatenate([np.ascontiguousarray(p).view(np.uint8) for p in parts])


def _unpack_csr(info, buf: np.ndarray, n: int):
    """(CsrBlock, y) from a packed CSR chunk of ``n`` rows."""
    a = 8 * (n + 1)
    indptr = buf[:a].view(np.int64)
    nnz = int(indptr[-1])
    b = a + nnz * info.index_dtype.itemsize
    c = b + nnz * info.dtype.itemsize
    return (CsrBlock(indptr, buf[a:b].view(info.index_dtype), buf[b:c].view(info.dtype)),
            buf[c:].view(info.y_dtype))


class DataServer:
    """One server rank's part of the dataset and its answers to workers' requests."""

    def __init__(self, ctx: Context, index: int, n_servers: int, table):
        self.ctx, self.table = ctx, table
        info = ctx.info
        self.first, last = block_range(table.n, n_servers, index)
        reader = ChunkReader(info, ctx.cfg.data, ctx.cfg.debug, ctx.topo.rank)
        t0 = time.perf_counter()
        try:
            # One contiguous byte block per chunk, laid out as it is sent: X rows, then y.
            self.blocks = []
            for c in range(self.first, last):
                data = reader.get(c, table.lo[c], table.hi[c])
                if data is None:   # skipped after retries: the workers get an empty chunk
                    self.blocks.append(np.empty(0, dtype=np.uint8))
                    continue
                self.blocks.append(_pack(ctx, *data))
        finally:
            reader.close()
        self.report = dict(reader.stats)
        self.skipped = list(reader.skipped)
        ctx.timers["data"] += time.perf_counter() - t0
        self.workers = ctx.roles.workers
        world = ctx.topo.world
        self.asks = [np.zeros(1, dtype=np.int64) for _ in self.workers]
        self.recvs = [world.Irecv(a, w, TAG_DATA_REQ) for a, w in zip(self.asks, self.workers)]
        self.sends: list[tuple[int, MPI.Request]] = []   # (worker, its answer in flight)
        self.bye = [False] * len(self.workers)
        self.sent_bytes = 0

    def serve(self, i: int) -> None:
        """Answer worker i's request (its receive completed) and listen again."""
        chunk = int(self.asks[i][0])
        world = self.ctx.topo.world
        if chunk == BYE:
            self.bye[i] = True
            self.recvs[i] = MPI.REQUEST_NULL
            return
        block = self.blocks[chunk - self.first]
        # Chunks are never modified: send straight from the block, no copy.
        self.sends.append((i, world.Isend([block, MPI.BYTE], self.workers[i], TAG_DATA)))
        self.sent_bytes += block.nbytes
        self.recvs[i] = world.Irecv(self.asks[i], self.workers[i], TAG_DATA_REQ)
        if len(self.sends) > 64:   # keep the list short: drop completed sends
            self.sends = [(w, r) for w, r in self.sends if not r.Test()]

    def drop(self, i: int) -> None:
        """Worker i died: it asks for nothing more and will never receive what is in
        flight to it (those sends are abandoned, not waited for)."""
        if self.recvs[i] != MPI.REQUEST_NULL:
            self.recvs[i].Cancel()
            self.recvs[i].Wait()
            self.recvs[i] = MPI.REQUEST_NULL
        self.bye[i] = True
        self.sends = [(w, r) for w, r in self.sends if w != i]

    def done(self) -> bool:
        return all(self.bye)

    def finish(self, poller) -> None:
        """After training: answer until every worker said bye; complete every send."""
        while not self.done():
            for i in poller.wait_some(self.recvs):
                self.serve(i)
        MPI.Request.Waitall([r for _, r in self.sends])
        self.sends = []


class ServerChunkSource:
    """A worker's chunk source under server placement: the ChunkReader interface."""

    def __init__(self, ctx: Context, owner: np.ndarray, table):
        self.ctx, self.table, self.info = ctx, table, ctx.info
        self.servers = ctx.roles.servers
        self.owner = owner   # server index of every chunk
        self.csr = ctx.info.layout == "csr"
        # dense: key -> (its receive, its buffer); CSR: key -> None until received
        self.pending: dict[int, tuple[MPI.Request, np.ndarray] | None] = {}
        self.asked = {s: deque() for s in self.servers}   # CSR: keys in the order asked
        self.arrived: dict[int, tuple[np.ndarray, int]] = {}   # CSR: (bytes, count)
        self.stats = {"chunks": 0, "bytes": 0, "retries": 0, "skipped_chunks": 0,
                      "skipped_rows": 0, "wait_s": 0.0}
        self.skipped: list[str] = []
        self._ask = {}   # per chunk: its request message (kept alive until sent)

    def request(self, key: int, lo: int, hi: int) -> None:
        if key in self.pending:
            return
        world = self.ctx.topo.world
        server = self.servers[self.owner[key]]
        if self.csr:
            self.asked[server].append(key)
            self.pending[key] = None
        else:
            buf = np.empty((hi - lo) * _row_bytes(self.info), dtype=np.uint8)
            self.pending[key] = (world.Irecv([buf, MPI.BYTE], server, TAG_DATA), buf)
        ask = np.array([key], dtype=np.int64)
        self._ask[key] = (world.Isend(ask, server, TAG_DATA_REQ), ask)

    def _receive(self, key: int) -> tuple[np.ndarray, int]:
        """(bytes, count) of chunk ``key``'s answer: dense, into its posted buffer; CSR,
        every earlier answer of its server first (they come in the order asked)."""
        entry = self.pending.pop(key)
        if not self.csr:
            recv, buf = entry
            status = MPI.Status()
            recv.Wait(status)
            return buf, status.Get_count(MPI.BYTE)
        server = self.servers[self.owner[key]]
        while key not in self.arrived:
            k = self.asked[server].popleft()
            status = MPI.Status()
            msg = self.ctx.topo.world.Mprobe(server, TAG_DATA, status)
            buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
            msg.Recv([buf, MPI.BYTE])
            self.arrived[k] = (buf, buf.size)
        return self.arrived.pop(key)

    def get(self, key: int, lo: int, hi: int):
        self.request(key, lo, hi)
        t0 = time.perf_counter()
        buf, count = self._receive(key)
        self._ask.pop(key)[0].Wait()
        self.stats["wait_s"] += time.perf_counter() - t0
        n = int(hi - lo)
        if count == 0 and n:   # the server skipped this chunk
            self.stats["skipped_chunks"] += 1
            self.stats["skipped_rows"] += n
            return None
        self.stats["chunks"] += 1
        self.stats["bytes"] += buf.nbytes
        info = self.info
        if self.csr:
            return _unpack_csr(info, buf, n)
        split = n * info.n_features * info.dtype.itemsize
        return buf[:split].view(info.dtype).reshape(n, info.n_features), buf[split:].view(
            info.y_dtype)

    def forget(self, keep) -> None:
        """Requests already sent are answered: receive and drop the ones not needed."""
        for key in [k for k in self.pending if k not in keep]:
            self._receive(key)
            self._ask.pop(key)[0].Wait()

    def close(self) -> None:
        """Drain answers to requests still in flight, then say bye to every server."""
        self.forget(set())
        world = self.ctx.topo.world
        bye = np.array([BYE], dtype=np.int64)
        MPI.Request.Waitall([world.Isend(bye, s, TAG_DATA_REQ) for s in self.servers])

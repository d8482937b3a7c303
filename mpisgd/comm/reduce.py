"""Summing one fixed buffer across ranks, in place: the allreduce mode's only collective.

An object rather than a bare call so that the reduction method is chosen once, outside
the hot loop (``make_reducer``), and times itself:

* ``BufferAllreduce`` ("flat"): one ``Allreduce`` over the world communicator.
* ``HierarchicalAllreduce`` ("hierarchical"): ranks of a node sum their buffers in a
  node-shared window (each rank sums one slice of columns: a reduce-scatter in shared
  memory), node leaders ``Allreduce`` across nodes, every rank copies the result back;
  or, ``direct``, ranks write their gradients straight into the window and read the
  sum there: one pass over memory instead of three.
* ``CompressedAllreduce`` ("flat+<codec>", in :mod:`mpisgd.comm.compressed_reduce`):
  the gradient through a codec, with error feedback.

All three satisfy :class:`Reducer`, so a caller reads what it needs (where to write,
where the sum is, the window, the residual, the bytes sent) without asking which one it
holds.

The thresholds below were tuned with ``benchmarks/shm_reduce.py``; the measurements
behind each are in docs/performance.md, "Choosing the reducer".
"""

from __future__ import annotations

import functools
import os
from typing import Protocol, Self, runtime_checkable

import numpy as np
from mpi4py import MPI

from mpisgd.comm.shm import SharedArray, no_shm_reason, shm_possible, warn_no_shm
from mpisgd.errors import ConfigError

METHODS = ("flat", "hierarchical", "auto")

# "auto" picks the hierarchical reducer from this buffer size up, when a node holds more
# than one rank (auto_method has the upper end): below it, MPI's shared-memory Allreduce
# for small messages costs about one barrier, our two node syncs (three across nodes)
# twice that, and the hierarchical reducer loses.
HIERARCHICAL_MIN_BYTES = 64 << 10
# With a core per rank, MPI's large-message Allreduce moves less data than our copies in
# and out, so "auto" stays hierarchical only while its one-chunk window (a row per rank
# and the result row) is at most this. With more ranks than cores, hierarchical at every
# size from HIERARCHICAL_MIN_BYTES: MPI's rounds of messages then wait for descheduled
# ranks.
AUTO_WINDOW_BYTES = 8 << 20

# Column slices start on cache-line boundaries so two ranks never write one line.
_ALIGN_BYTES = 64

# The hierarchical reducer's node window. A buffer whose window (a row per rank and a
# result row) fits in SINGLE_WINDOW_BYTES is reduced in one chunk: the fewest syncs, and
# the window still fits a typical last-level cache. A larger one is cut into chunks whose
# double-buffered slots fit in CHUNK_WINDOW_BYTES, so that a chunk copied in is still in
# the cache when it is summed and copied out.
SINGLE_WINDOW_BYTES = 16 << 20
CHUNK_WINDOW_BYTES = 8 << 20
# ... unless the node has more ranks than cores: then every sync waits for descheduled
# ranks (up to a scheduler time slice), and fewer syncs beat cache reuse. One chunk then,
# up to this window; it is about the memory of the buffers themselves ((local+1) rows
# against local private buffers).
CROWDED_WINDOW_BYTES = 1 << 30


@runtime_checkable
class Reducer(Protocol):
    """What every reducer offers (``make_reducer``'s and :class:`CompressedAllreduce`).

    Collective over the ranks it sums across: ``self(step)`` sums every rank's ``inbox``
    into ``result``. For most reducers both are the buffer they were made with (an
    in-place sum); a direct hierarchical reducer's inbox is this rank's row of the node
    window, where the caller writes its gradient, and its result the node's shared sum,
    which every rank of the node reads and none writes until the next call but for what
    the caller owns (see :class:`HierarchicalAllreduce`). The defaults are the dense
    reducers' and are inherited by subclassing.
    """

    method: str                         # what summary.json reports ("flat", ...)
    inbox: np.ndarray                   # where this rank writes what it contributes
    result: np.ndarray                  # where the sum is after a call
    direct: bool = False                # result is node-shared memory, not inbox
    window: SharedArray | None = None   # the node-shared window it reduces in, if any
    window_bytes: int = 0               # bytes of that window this rank allocated
    residual: np.ndarray | None = None  # this rank's error-feedback residual, if any
    sent_bytes: int                     # logical bytes this rank sends per call

    def __call__(self, step: int = 0) -> None:
        """Sum the buffer across ranks in place (``step``: the codec's, if any)."""

    def free(self) -> None:
        """Collective: release what the reducer holds (idempotent)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Free on leaving, unless one rank alone is raising."""


class FreeOnExit(Reducer):
    """``with reducer:`` frees it on leaving, unless one rank alone is raising.

    ``free()`` is collective: on an error seen by this rank alone the other ranks are
    not coming, so freeing would hang; the job aborts and MPI_Finalize releases
    everything. An agreed error is raised on every rank, so every rank frees.
    """

    def free(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None or getattr(exc, "agreed", False):
            self.free()


class BufferAllreduce(FreeOnExit):
    """Collective over ``comm``: ``self()`` sums ``buf`` across ranks in place.

    Every rank must pass a buffer of the same size and dtype. The call is bound once
    (no per-step attribute lookups) so the per-step cost is the collective's alone;
    the caller times it.
    """

    method = "flat"

    def __init__(self, comm: MPI.Intracomm, buf: np.ndarray):
        if not buf.flags.c_contiguous:
            raise ValueError("BufferAllreduce needs a C-contiguous buffer")
        self.comm = comm
        self.buf = self.inbox = self.result = buf
        self.sent_bytes = buf.nbytes
        if comm.Get_size() > 1:
            self._reduce = functools.partial(comm.Allreduce, MPI.IN_PLACE, buf)
        else:
            self._reduce = _nothing

    def __call__(self, step: int = 0) -> None:
        self._reduce()


def _nothing() -> None:
    return None


def column_slice(n: int, parts: int, k: int, itemsize: int) -> tuple[int, int]:
    """Half-open range ``[lo, hi)`` of the columns part ``k`` of ``parts`` sums.

    Contiguous, in part order, starting on cache-line boundaries; the last parts may be
    empty when ``n`` is small. A pure function of its arguments, so every rank knows
    every rank's slice.
    """
    align = max(1, _ALIGN_BYTES // itemsize)
    step = -(-n // (parts * align)) * align
    lo = min(n, k * step)
    return lo, min(n, lo + step)


def chunk_elements(n: int, local: int, itemsize: int, crowded: bool = False) -> int:
    """Elements per chunk of the hierarchical reducer: whole cache lines, window-bounded.

    The whole buffer when its one-chunk window (``local`` rows and a result row) fits in
    ``SINGLE_WINDOW_BYTES`` (``CROWDED_WINDOW_BYTES`` when a node has more ranks than
    cores); else chunks whose window (2 row slots of ``local`` rows and 3 result slots)
    fits in ``CHUNK_WINDOW_BYTES`` (the crowded budget when crowded), at least a cache
    line per rank.
    """
    align = max(1, _ALIGN_BYTES // itemsize)
    whole = -(-n // align) * align
    single, budget = ((CROWDED_WINDOW_BYTES, CROWDED_WINDOW_BYTES) if crowded
                      else (SINGLE_WINDOW_BYTES, CHUNK_WINDOW_BYTES))
    if (local + 1) * whole * itemsize <= single:
        return whole
    width = budget // ((2 * local + 3) * itemsize) // align * align
    return min(max(width, local * align), whole)


def node_cores(node: MPI.Intracomm) -> int:
    """Collective over ``node``: cores its ranks may run on (the union of their affinities).

    The union, not one rank's view: a rank bound to one core still shares a node whose
    ranks each have their own core.
    """
    try:
        mine = sorted(os.sched_getaffinity(0))
    except AttributeError:   # not Linux: no affinity, assume every core
        mine = list(range(os.cpu_count() or 1))
    return len(set().union(*node.allgather(mine)))


def node_shape(topo) -> tuple[int, bool]:
    """Collective over ``topo.world``: (ranks on the largest node, some node has more
    ranks than cores). The same on every rank."""
    shape = np.array([topo.local_size, topo.local_size > node_cores(topo.node)],
                     dtype=np.int64)
    topo.world.Allreduce(MPI.IN_PLACE, shape, op=MPI.MAX)
    return int(shape[0]), bool(shape[1])


def auto_method(nbytes: int, widest: int, crowded: bool, direct: bool = False) -> str:
    """What ``"auto"`` picks for a buffer of ``nbytes`` (a pure function, see make_reducer).

    A direct reducer copies nothing and its window replaces the ranks' buffers, so the
    window limit (which bounds the copies' cost) does not apply to it.
    """
    if widest < 2 or nbytes < HIERARCHICAL_MIN_BYTES:
        return "flat"
    fits = (widest + 1) * nbytes <= AUTO_WINDOW_BYTES
    return "hierarchical" if crowded or fits or direct else "flat"


class HierarchicalAllreduce(FreeOnExit):
    """Collective over ``topo.world``: ``self()`` sums ``buf`` across all ranks in place.

    Same contract as :class:`BufferAllreduce`: every rank passes a C-contiguous buffer of
    the same size and dtype, bound once. The buffer is cut into chunks of
    :func:`chunk_elements` (one chunk for a small buffer) and each chunk passes through
    the stages below; ``sync`` is the node-wide memory barrier of :class:`SharedArray`.

    1. copy in: each rank copies the chunk of ``buf`` into its row of a node-shared slot;
    2. sum: local rank ``r`` sums column slice ``r`` of the rows, in row order, into a
       result slot (a reduce-scatter in shared memory);
    3. across nodes only: the node leaders ``Allreduce`` the result slot;
    4. copy out: every rank copies the result slot into the chunk of ``buf``.

    The stages run as a software pipeline: in phase ``p`` a rank copies in chunk ``p``,
    sums chunk ``p-1``, (its leader reduces chunk ``p-2``,) and copies out the chunk after
    that, with one ``sync`` between phases. A stage reads only what an earlier phase wrote,
    so every read follows a sync after the write; a slot is overwritten only after a sync
    that follows its last read, which takes two row slots (written in phase j, read in
    j+1) and two result slots (three across nodes). A call ends reading result slots
    only and the next one begins writing row slots only, so calls need no sync between
    them. ``chunks + 1`` syncs per call on one node, ``chunks + 2`` across nodes. Unless
    a node has more ranks than cores (then syncs are dear and one chunk is best), the
    window fits the last-level cache (``SINGLE_WINDOW_BYTES``), so a chunk moves through
    the cache rather than memory between its stages. Nothing is allocated per call.
    Every rank copies the same result slots, so the result is bitwise the same on
    every rank and on every run with the same topology, whatever the chunking.

    ``direct=True`` drops both copies: the window is one chunk of a row per rank and a
    result row, ``inbox`` is this rank's row (the caller writes its gradient there, not
    into ``buf``) and ``result`` the result row. A call is then: sync; sum slice ``r``;
    (sync; leaders ``Allreduce`` the result;) sync: one pass over memory instead of
    three, in as much shared memory as the ranks' private buffers took. The result is
    shared: after a call a rank may write only the part of it no other rank reads
    before the next call (its own column slice, in :class:`NodeParams`), and the next
    call's first sync orders those reads before anyone sums again.

    Leaders reduce in the same chunks on every node. A node of one rank has no window;
    a node whose ranks cannot share memory (``MPISGD_NO_SHM=1``) keeps none and moves
    the whole buffer with ``Reduce`` to the leader and ``Bcast``; in both cases
    ``inbox`` and ``result`` are ``buf``, direct or not. Call :meth:`free` (collective
    over the world) when done.
    """

    method = "hierarchical"

    def __init__(self, topo, buf: np.ndarray, direct: bool = False):
        if not buf.flags.c_contiguous:
            raise ValueError("HierarchicalAllreduce needs a C-contiguous buffer")
        self.topo = topo
        self.buf = self.inbox = self.result = buf
        self.direct = False
        self.sent_bytes = buf.nbytes
        flat = buf.reshape(-1)
        n, local = flat.size, topo.local_size
        leader = topo.local_rank == 0
        self.leaders = topo.world.Split(0 if leader else MPI.UNDEFINED, topo.rank)
        self.window: SharedArray | None = None
        across = topo.node_count > 1
        # Leaders reduce chunk by chunk, so every node must cut the buffer alike: the
        # width follows the largest and most crowded node, whatever this one is like.
        widest, crowded = node_shape(topo)
        align = max(1, _ALIGN_BYTES // flat.itemsize)
        width = (-(-n // align) * align if direct else
                 chunk_elements(n, widest, flat.itemsize, crowded)) if n else 1
        self.chunks = -(-n // width)
        pieces = [flat[j * width:(j + 1) * width] for j in range(self.chunks)]
        inter = [functools.partial(self.leaders.Allreduce, MPI.IN_PLACE, piece)
                 for piece in pieces] if across and leader else []
        if local == 1 or n == 0:
            self._steps = inter
            return
        if not shm_possible(topo.node):
            warn_no_shm(topo.node, no_shm_reason())
            self._steps = self._message_steps(flat, leader, inter)
            return
        row_slots = 1 if direct else min(2, self.chunks)
        result_slots = 1 if direct else min(3 if across else 2, self.chunks)
        self.window = SharedArray(topo.node, (row_slots * local + result_slots, width),
                                  flat.dtype)
        if not self.window.shared:   # allocation failed: private copies would only waste memory
            self.window.free()
            self.window = None
            self._steps = self._message_steps(flat, leader, inter)
            return
        if direct:
            self._steps = self._direct_steps(n, buf.shape, across)
        else:
            self._steps = self._pipeline(flat, width, row_slots, result_slots, across)

    def _direct_steps(self, n: int, shape: tuple, across: bool) -> list:
        """The bound calls of a direct reduction (see the class): inbox and result are
        rows of the window, no copies."""
        local, lrank = self.topo.local_size, self.topo.local_rank
        space, sync = self.window.array, self.window.sync
        self.direct = True
        self.inbox = space[lrank, :n].reshape(shape)
        self.result = space[local, :n].reshape(shape)
        a, b = column_slice(n, local, lrank, space.itemsize)
        steps = [sync]
        if b > a:
            steps += _blocked_sum(space[local, a:b], [space[i, a:b] for i in range(local)])
        if across:
            steps.append(sync)
            if lrank == 0:
                steps.append(functools.partial(self.leaders.Allreduce, MPI.IN_PLACE,
                                               space[local, :n]))
        steps.append(sync)
        return steps

    def _pipeline(self, flat, width, row_slots, result_slots, across) -> list:
        """The bound calls of one reduction, phase by phase, syncs between phases."""
        local, lrank, leader = self.topo.local_size, self.topo.local_rank, self.topo.local_rank == 0
        space, m = self.window.array, self.chunks
        stages = []
        for j in range(m):
            lo, hi = j * width, min(flat.size, (j + 1) * width)
            rows = space[(j % row_slots) * local:(j % row_slots + 1) * local, :hi - lo]
            result = space[row_slots * local + j % result_slots, :hi - lo]
            a, b = column_slice(hi - lo, local, lrank, flat.itemsize)
            chunk = [functools.partial(np.copyto, rows[lrank], flat[lo:hi])]
            chunk.append(functools.partial(_sum_rows, result[a:b], [r[a:b] for r in rows])
                         if b > a else None)
            if across:
                chunk.append(functools.partial(self.leaders.Allreduce, MPI.IN_PLACE, result)
                             if leader else None)
            chunk.append(functools.partial(np.copyto, flat[lo:hi], result))
            stages.append(chunk)
        depth = len(stages[0])
        steps = []
        for phase in range(m + depth - 1):
            if phase:
                steps.append(self.window.sync)
            # Latest stage first: a leader starts the inter-node reduction before its own
            # copies, so the other nodes' leaders wait less.
            for stage in reversed(range(depth)):
                j = phase - stage
                if 0 <= j < m and stages[j][stage] is not None:
                    steps.append(stages[j][stage])
        return steps

    def _message_steps(self, flat: np.ndarray, leader: bool, inter: list) -> list:
        """The same stages with messages, for a node without shared memory."""
        node = self.topo.node
        if leader:
            steps = [functools.partial(node.Reduce, MPI.IN_PLACE, flat, MPI.SUM, 0), *inter]
        else:
            steps = [functools.partial(node.Reduce, flat, None, MPI.SUM, 0)]
        steps.append(functools.partial(node.Bcast, flat, 0))
        return steps

    def __call__(self, step: int = 0) -> None:
        for call in self._steps:
            call()

    @property
    def window_bytes(self) -> int:
        """Bytes of node-shared memory this rank allocated (0 without a window)."""
        return self.window.window_bytes if self.window is not None else 0

    def free(self) -> None:
        """Collective over the world (idempotent): free the window and the leaders' comm."""
        self._steps = []
        if self.window is not None:
            self.window.free()
            self.window = None
        if self.leaders != MPI.COMM_NULL:
            self.leaders.Free()
        self.leaders = MPI.COMM_NULL


# A direct reducer sums its slice block by block, so that the partial sum stays in the
# cache while each rank's row is added to it (one read of every row, one write of the
# slice), instead of one pass over the whole slice per row.
SUM_BLOCK_BYTES = 128 << 10


def _blocked_sum(out: np.ndarray, inputs: list) -> list:
    """Bound calls that set ``out`` to the sum of ``inputs`` (in list order, so the same
    bits as :func:`_sum_rows`), in blocks of about ``SUM_BLOCK_BYTES``."""
    step = max(1, SUM_BLOCK_BYTES // out.itemsize)
    return [functools.partial(_sum_rows, out[lo:lo + step], [r[lo:lo + step] for r in inputs])
            for lo in range(0, out.size, step)]


def _sum_rows(out: np.ndarray, inputs: list) -> None:
    """out = inputs[0] + inputs[1] + ..., added in list order (fixed, so deterministic)."""
    np.add(inputs[0], inputs[1], out=out)
    for row in inputs[2:]:
        np.add(out, row, out=out)


def make_reducer(method: str, topo, buf: np.ndarray, direct: bool = False) -> Reducer:
    """Collective over ``topo.world``: the reducer for ``buf`` that ``method`` names.

    ``"flat"``: :class:`BufferAllreduce` on the world; ``"hierarchical"``:
    :class:`HierarchicalAllreduce`; ``"auto"``: :func:`auto_method` - hierarchical when
    some node holds more than one rank, ``buf`` has at least ``HIERARCHICAL_MIN_BYTES``,
    and either some node has more ranks than cores or the one-chunk window is at most
    ``AUTO_WINDOW_BYTES``; else flat. The choice depends only on values agreed over the
    world, so every rank makes the same one. ``direct`` asks a hierarchical reducer to
    take its input in its window (see :class:`HierarchicalAllreduce`): the caller then
    writes into ``inbox`` and reads ``result``, which a flat reducer keeps as ``buf``.
    """
    if method not in METHODS:
        raise ConfigError(f"The 'comm.allreduce' parameter must be one of "
                          f"{', '.join(map(repr, METHODS))}. Got {method!r} instead.")
    if method == "auto":
        method = auto_method(buf.nbytes, *node_shape(topo), direct)
    if method == "hierarchical":
        return HierarchicalAllreduce(topo, buf, direct)
    return BufferAllreduce(topo.world, buf)

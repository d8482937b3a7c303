"""Node-shared numpy arrays on MPI-3 shared-memory windows, with a private fallback.

Memory model. A window is allocated with ``MPI.Win.Allocate_shared`` over the node
communicator; local rank 0 allocates the whole segment and the other ranks allocate
nothing and map rank 0's segment (``Shared_query``), so every rank of the node sees one
numpy array. MPICH and Open MPI provide the MPI-3 *unified* model for such windows
(checked at creation): a plain store becomes visible to the other ranks' plain loads
without RMA calls. Each window is kept in one passive-target epoch (``Lock_all`` at
creation, ``Unlock_all`` at free), inside which ``Win.Sync`` is the memory barrier that
orders this rank's loads and stores. ``sync()`` is the one ordering primitive:
``Win.Sync(); node.Barrier(); Win.Sync()``. Every store a rank made before its
``sync()`` is visible to every load any node rank makes after its ``sync()``; a region
must never be written by one rank while another reads or writes it between two syncs.

Fallback. When the node's ranks cannot share memory (``MPISGD_NO_SHM=1``, a node
communicator that spans hosts, or ``Allocate_shared`` failing), every rank gets a
private numpy array instead, ``shared`` is False and a warning is printed once per
process. Code that uses a SharedArray must check ``shared`` and move data with
messages then (see ``HierarchicalAllreduce`` in ``reduce.py``).
"""

from __future__ import annotations

import math
import os

import numpy as np
from mpi4py import MPI

from mpisgd.runtime.log import warn

NO_SHM_ENV = "MPISGD_NO_SHM"

_warned = False


def shm_disabled() -> bool:
    """True when the environment asks for private arrays (``MPISGD_NO_SHM`` set, not 0)."""
    return os.environ.get(NO_SHM_ENV, "").strip() not in ("", "0")


def shm_possible(node: MPI.Intracomm) -> bool:
    """Collective over ``node``: can its ranks share memory? Same answer on every rank.

    No when ``MPISGD_NO_SHM`` is set on any rank, or when the node communicator is not
    inside one shared-memory domain (an emulated node that straddles two hosts).
    """
    within = node.Split_type(MPI.COMM_TYPE_SHARED, key=node.Get_rank())
    whole = within.Get_size() == node.Get_size()
    within.Free()
    return bool(node.allreduce(int(whole and not shm_disabled()), op=MPI.MIN))


class SharedArray:
    """Collective over ``node``: one array of ``shape``/``dtype`` shared by the node's ranks.

    ``array`` is the numpy view (the same memory on every node rank when ``shared``);
    ``window_bytes`` is what this rank allocated (the whole array on local rank 0, 0
    elsewhere; the whole array on every rank in the private fallback). The array
    starts zeroed. Never use ``array`` or a view of it after ``free()``: the memory is
    unmapped then.
    """

    def __init__(self, node: MPI.Intracomm, shape, dtype=np.float64):
        self.node = node
        self.shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        count = math.prod(self.shape)
        self.nbytes = count * self.dtype.itemsize
        self._win: MPI.Win | None = None
        self._freed = False
        reason = None if shm_possible(node) else no_shm_reason()
        if reason is None:
            self._win, reason = _allocate(node, self.nbytes, self.dtype.itemsize)
        if self._win is not None:
            memory, _ = self._win.Shared_query(0)
            self.array = np.frombuffer(memory, dtype=self.dtype, count=count).reshape(self.shape)
            self.window_bytes = self.nbytes if node.Get_rank() == 0 else 0
            self._win.Lock_all(MPI.MODE_NOCHECK)
            if node.Get_rank() == 0:
                self.array.fill(0)
            self.sync()
        else:
            warn_no_shm(node, reason)
            self.array = np.zeros(self.shape, dtype=self.dtype)
            self.window_bytes = self.nbytes

    @property
    def shared(self) -> bool:
        """True when ``array`` is one memory for the whole node."""
        return self._win is not None

    def sync(self) -> None:
        """Collective over the node: stores before it are visible to loads after it, node-wide.

        A plain node barrier in the private fallback, so callers keep one code path.
        """
        if self._win is not None:
            self._win.Sync()
        self.node.Barrier()
        if self._win is not None:
            self._win.Sync()

    def fence(self) -> None:
        """This rank's memory barrier for the window (``Win.Sync``); no-op when private."""
        if self._win is not None:
            self._win.Sync()

    def free(self) -> None:
        """Collective over the node (idempotent): release the window and unmap the array."""
        if self._freed:
            return
        self._freed = True
        self.array = None
        if self._win is not None:
            self._win.Unlock_all()
            self._win.Free()
            self._win = None

    def __enter__(self) -> "SharedArray":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # free() is collective: on an error seen by this rank alone the other ranks are not
        # coming, so freeing would hang; the job aborts and MPI_Finalize releases the window.
        # An agreed error is raised on every rank, so every rank frees.
        if exc is None or getattr(exc, "agreed", False):
            self.free()


def sync_arrays(node: MPI.Intracomm, arrays) -> None:
    """Collective over ``node``: :meth:`SharedArray.sync` for several windows, one barrier."""
    for a in arrays:
        a.fence()
    node.Barrier()
    for a in arrays:
        a.fence()


def _allocate(node: MPI.Intracomm, nbytes: int, itemsize: int) -> tuple[MPI.Win | None, str | None]:
    """Collective over ``node``: a shared window of ``nbytes`` on local rank 0, or a reason.

    A failure on any rank makes every rank fall back. A rank whose allocation succeeded
    while another's failed keeps its window unfreed (freeing is collective and the failed
    ranks have no window to free): it is released at MPI_Finalize.
    """
    win, error = None, None
    try:
        # At least one byte: a zero-size segment may come back as a NULL base address.
        size = max(nbytes, 1) if node.Get_rank() == 0 else 0
        win = MPI.Win.Allocate_shared(size, itemsize, comm=node)
        if win.Get_attr(MPI.WIN_MODEL) != MPI.WIN_UNIFIED:
            error = "the MPI library offers only the separate memory model"
    except MPI.Exception as exc:
        error = f"MPI_Win_allocate_shared failed: {exc}"
    everyone = node.allgather(error)
    failed = [e for e in everyone if e is not None]
    if not failed:
        return win, None
    if win is not None and len(failed) == len(everyone):
        win.Free()
    return None, failed[0]


def no_shm_reason() -> str:
    """Why :func:`shm_possible` said no, as this rank sees it."""
    return f"{NO_SHM_ENV} is set" if shm_disabled() else "the node's ranks share no memory"


def warn_no_shm(node: MPI.Intracomm, reason: str) -> None:
    """Local rank 0 of ``node``: warn once per process that node memory is not shared."""
    global _warned
    if not _warned and node.Get_rank() == 0:
        warn(f"node-shared arrays fall back to private copies per rank ({reason}): "
             f"results are the same, memory use and speed are not", all_ranks=True)
    _warned = True

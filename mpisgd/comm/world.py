"""The library's communicators, node topology, and agreeing on errors before raising.

mpisgd works on a duplicate of COMM_WORLD (as Heat does) so that its traffic never
matches a user's messages. A problem seen on one rank is agreed through a collective
first; then every rank raises the same error, so nobody is left waiting.
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from mpi4py import MPI

from mpisgd import errors
from mpisgd.errors import CommError, MpisgdError
from mpisgd.runtime.supervise import outcome_decided


@dataclass
class Topology:
    """Who is where: the world (a duplicate), the node, and the node leaders.

    ``ranks_per_node`` > 0 splits one machine into emulated nodes of that many
    consecutive ranks (``MPISGD_RANKS_PER_NODE``), so multi-node code paths run here.
    """

    world: MPI.Intracomm
    node: MPI.Intracomm
    leaders: MPI.Intracomm         # local rank 0 of every node; COMM_NULL elsewhere
    rank: int
    size: int
    local_rank: int
    local_size: int
    node_index: int
    node_count: int

    def free(self) -> None:
        """Collective over the world: release the duplicated communicators."""
        for comm in (self.leaders, self.node, self.world):
            if comm != MPI.COMM_NULL:
                comm.Free()


def make_topology(ranks_per_node: int = 0) -> Topology:
    """Collective over COMM_WORLD: duplicate it and split it into (emulated) nodes."""
    enable_single_abort_message()
    world = MPI.COMM_WORLD.Dup()
    env = os.environ.get("MPISGD_RANKS_PER_NODE", "")
    if not ranks_per_node and env:
        try:
            ranks_per_node = int(env)
        except ValueError:
            ranks_per_node = -1
        if ranks_per_node < 1:
            world.Free()
            raise CommError(f"MPISGD_RANKS_PER_NODE must be a positive integer, got {env!r}.",
                            agreed=True)
    rank, size = world.Get_rank(), world.Get_size()
    if ranks_per_node:
        node = world.Split(rank // ranks_per_node, rank)
    else:
        node = world.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank, local_size = node.Get_rank(), node.Get_size()
    # Node index: order nodes by their lowest world rank, known to every rank.
    leader = node.bcast(rank if local_rank == 0 else None, root=0)
    leaders = sorted(set(world.allgather(leader)))
    across = world.Split(0 if local_rank == 0 else MPI.UNDEFINED, rank)
    return Topology(world=world, node=node, leaders=across, rank=rank, size=size,
                    local_rank=local_rank,
                    local_size=local_size, node_index=leaders.index(leader),
                    node_count=len(leaders))


def _describe(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ",".join(map(str, ranks))


def agree(comm: MPI.Intracomm, error: BaseException | None) -> None:
    """Collective over ``comm``: raise the same error on every rank if any rank had one.

    Each rank passes the exception it caught (or None). If any rank failed, every rank
    raises an error of the first failing rank's type whose message names the failing
    ranks, marked ``agreed`` so the CLI can exit cleanly without aborting the job.
    """
    mine = None
    if error is not None:
        ours = isinstance(error, MpisgdError)
        text = str(error) if ours else f"{type(error).__name__}: {error}"
        mine = (type(error).__name__ if ours else "", text, getattr(error, "exit_code", 1))
    everyone = comm.allgather(mine)
    failed = [(r, e) for r, e in enumerate(everyone) if e is not None]
    if not failed:
        return
    # Group ranks that report the same message so 8 identical errors read as one.
    groups: dict[str, list[int]] = {}
    for r, (_, text, _) in failed:
        groups.setdefault(text, []).append(r)
    whole = len(groups) == 1 and len(failed) == comm.Get_size()
    message = "; ".join(t if whole else f"{_describe(rs)}: {t}" for t, rs in groups.items())
    cls_name, _, code = failed[0][1]
    exc = _error_class(cls_name)(message, agreed=True)
    exc.exit_code = code
    raise exc from error


def _error_class(name: str) -> type[MpisgdError]:
    cls = getattr(errors, name, None) if name else None
    if isinstance(cls, type) and issubclass(cls, MpisgdError):
        return cls
    return CommError


def agreed_call(comm: MPI.Intracomm, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Collective over ``comm``: run ``fn`` on every rank, then agree on any error."""
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:
        agree(comm, exc)
        raise
    agree(comm, None)
    return result


def bcast_value(comm: MPI.Intracomm, fn: Callable[[], Any], root: int = 0) -> Any:
    """Collective: ``fn`` runs on ``root`` only; its result (or error) reaches every rank."""
    result, error = None, None
    if comm.Get_rank() == root:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - agreed below
            error = exc
    agree(comm, error)
    return comm.bcast(result, root=root)


# One int on world rank 0 that every aborting rank increments (MPI_Fetch_and_op): the
# first to get there prints its message, later ones (two servers seeing the same NaN,
# every worker failing the same read) stay quiet, so a job ends with one message.
_abort_counter: MPI.Win | None = None


def enable_single_abort_message() -> None:
    """Collective over COMM_WORLD, once per process (later calls do nothing)."""
    global _abort_counter
    if _abort_counter is not None:
        return
    comm = MPI.COMM_WORLD
    win = MPI.Win.Allocate(4 if comm.Get_rank() == 0 else 0, 4, comm=comm)
    if comm.Get_rank() == 0:
        np.frombuffer(win.tomemory(), dtype=np.int32)[:] = 0
    comm.Barrier()
    _abort_counter = win
    # Freed (collectively) before MPI_Finalize, which mpi4py runs after Python's atexit
    # handlers: a window left open makes some transports warn at exit.
    atexit.register(_free_abort_counter)


def _free_abort_counter() -> None:
    global _abort_counter
    win, _abort_counter = _abort_counter, None
    if win is not None and MPI.Is_initialized() and not MPI.Is_finalized():
        win.Free()


def _first_to_abort(timeout: float = 1.0) -> bool:
    """Whether no other rank has started aborting. Asked from a helper thread with a
    timeout: if rank 0 makes no MPI progress (stuck in a kernel on another node), this
    rank speaks rather than wait."""
    win = _abort_counter
    if win is None or not MPI.Is_initialized() or MPI.Is_finalized():
        return True
    answer: list[bool] = []

    def ask() -> None:
        old = np.zeros(1, dtype=np.int32)
        try:
            win.Lock(0, MPI.LOCK_SHARED)
            win.Fetch_and_op(np.ones(1, dtype=np.int32), old, 0, 0, MPI.SUM)
            win.Unlock(0)
            answer.append(int(old[0]) == 0)
        except Exception:  # noqa: BLE001 - when in doubt, speak
            answer.append(True)

    helper = threading.Thread(target=ask, name="mpisgd-abort", daemon=True)
    helper.start()
    helper.join(timeout)
    return answer[0] if answer else True


def _wait_progressing(seconds: float) -> None:
    """Sleep, but keep MPI progressing: rank 0 serves the other ranks' abort-counter
    requests only while it calls into MPI."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if MPI.Is_initialized() and not MPI.Is_finalized():
                MPI.COMM_WORLD.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
        except Exception:  # noqa: BLE001 - only a courtesy to the others
            pass
        time.sleep(0.01)


def abort_job(message: str, code: int = 1) -> None:
    """Any rank: print one message naming this rank, then end the whole job.

    Without the abort, this rank would wait in MPI_Finalize while the others wait
    for it in a collective, forever. If another rank is already aborting (it has
    printed its own message), this one waits to be ended with it, and speaks and
    aborts by itself only if that has not happened within 5 s.
    """
    sys.stdout.flush()
    text = (f"mpisgd: error on rank {MPI.COMM_WORLD.Get_rank()} ({socket.gethostname()}): "
            f"{message}\n")
    if not _first_to_abort():
        _wait_progressing(5.0)
    sys.stderr.write(text)
    sys.stderr.flush()
    # The launcher forwards this rank's stderr through its proxy; an immediate abort
    # can tear the proxy down before the message is forwarded (seen with hydra).
    _wait_progressing(0.5)
    # Said: this rank's supervisor must not report its end as a death of its own (Open
    # MPI's MPI_Abort exits this process with the code; its launcher then SIGTERMs the rest).
    outcome_decided(code)
    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.COMM_WORLD.Abort(code)
    os._exit(code)

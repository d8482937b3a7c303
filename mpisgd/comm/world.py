"""The library's communicators, node topology, and agreeing on errors before raising.

mpisgd works on a duplicate of COMM_WORLD (as Heat does) so that its traffic never
matches a user's messages. A problem seen on one rank is agreed through a collective
first; then every rank raises the same error, so nobody is left waiting.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from mpi4py import MPI

from .. import errors
from ..errors import CommError, MpisgdError


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
    emulated: bool

    def free(self) -> None:
        """Collective over the world: release the duplicated communicators."""
        for comm in (self.leaders, self.node, self.world):
            if comm != MPI.COMM_NULL:
                comm.Free()


def make_topology(ranks_per_node: int = 0) -> Topology:
    """Collective over COMM_WORLD: duplicate it and split it into (emulated) nodes."""
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
                    node_count=len(leaders), emulated=bool(ranks_per_node))


def rank_tag() -> str:
    """``[rank@host]`` for log lines and error messages."""
    return f"[{MPI.COMM_WORLD.Get_rank()}@{socket.gethostname()}]"


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
    except Exception as exc:  # noqa: BLE001 - every error is agreed, then re-raised
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


def abort_job(message: str, code: int = 1) -> None:
    """Any rank: print one message naming this rank, then end the whole job.

    Without the abort, this rank would wait in MPI_Finalize while the others wait
    for it in a collective, forever.
    """
    sys.stdout.flush()
    sys.stderr.write(f"mpisgd: error on rank {MPI.COMM_WORLD.Get_rank()} "
                     f"({socket.gethostname()}): {message}\n")
    sys.stderr.flush()
    # The launcher forwards this rank's stderr through its proxy; an immediate abort
    # can tear the proxy down before the message is forwarded (seen with hydra).
    time.sleep(0.5)
    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.COMM_WORLD.Abort(code)
    os._exit(code)

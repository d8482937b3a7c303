"""Output discipline: ordinary lines come from rank 0 only; warnings carry [rank@host]."""

from __future__ import annotations

import socket
import sys

from mpi4py import MPI


def say(message: str) -> None:
    """Rank 0 prints ``message`` to stdout; the other ranks stay quiet."""
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(message, flush=True)


def warn(message: str, *, all_ranks: bool = False) -> None:
    """A warning on stderr tagged with the rank; by default from rank 0 only."""
    rank = MPI.COMM_WORLD.Get_rank()
    if all_ranks or rank == 0:
        sys.stderr.write(f"mpisgd: warning [{rank}@{socket.gethostname()}]: {message}\n")
        sys.stderr.flush()

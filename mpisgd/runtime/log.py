"""Output discipline: ordinary lines come from rank 0 only; warnings carry [rank@host];
details (process ids, memory per node) only with ``--verbose``; while a progress bar is
live, every line goes through it."""

from __future__ import annotations

import socket
import sys
from typing import Callable

from mpi4py import MPI

_verbose = False
# While rank 0 shows a live progress bar, the bar's own writer (it clears the bar,
# writes the line, redraws the bar below it); None otherwise.
_through: Callable[[str], None] | None = None


def set_verbose(on: bool) -> None:
    """``--verbose``: :func:`detail` lines are shown (each command sets it for its job)."""
    global _verbose
    _verbose = bool(on)


def verbose() -> bool:
    return _verbose


def say(message: str) -> None:
    """Rank 0 prints ``message`` to stdout; the other ranks stay quiet."""
    if MPI.COMM_WORLD.Get_rank() == 0:
        _emit(message, sys.stdout)


def detail(message: str) -> None:
    """:func:`say`, only with ``--verbose``: what helps to debug a run, not to read it."""
    if _verbose:
        say(message)


def warn(message: str, *, all_ranks: bool = False) -> None:
    """A warning on stderr tagged with the rank; by default from rank 0 only."""
    rank = MPI.COMM_WORLD.Get_rank()
    if all_ranks or rank == 0:
        _emit(f"mpisgd: warning [{rank}@{socket.gethostname()}]: {message}", sys.stderr)


def _emit(text: str, stream) -> None:
    # With a live bar, a warning goes through it too (to stdout, the bar's stream): under
    # MPICH's hydra stdout and stderr travel on two pipes, and their order at the terminal
    # is not kept, so a warning on stderr could land in the middle of a redraw.
    if _through is not None:
        _through(text)
        return
    stream.write(text + "\n")
    stream.flush()


def live(writer: Callable[[str], None] | None) -> None:
    """Route every line of this process through ``writer`` (a live progress bar's), or
    back to the plain streams (None)."""
    global _through
    _through = writer


def end_live() -> None:
    """Before an error message: the live bar's line is ended, so that the message does
    not glue onto it. (The bar itself is not closed: only its owner does that.)"""
    global _through
    if _through is not None:
        _through = None
        sys.stdout.write("\n")
        sys.stdout.flush()

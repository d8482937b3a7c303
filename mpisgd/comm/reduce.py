"""Summing one fixed buffer across ranks, in place: the allreduce mode's only collective.

An object rather than a bare call so that the reduction method (flat now; hierarchical
and compressed later) is chosen once, outside the hot loop, and times itself.
"""

from __future__ import annotations

import functools

import numpy as np
from mpi4py import MPI


class BufferAllreduce:
    """Collective over ``comm``: ``self()`` sums ``buf`` across ranks in place.

    Every rank must pass a buffer of the same size and dtype. The call is bound once
    (no per-step attribute lookups) so the per-step cost is the collective's alone;
    the caller times it.
    """

    def __init__(self, comm: MPI.Intracomm, buf: np.ndarray):
        if not buf.flags.c_contiguous:
            raise ValueError("BufferAllreduce needs a C-contiguous buffer")
        self.comm = comm
        self.buf = buf
        if comm.Get_size() > 1:
            self._reduce = functools.partial(comm.Allreduce, MPI.IN_PLACE, buf)
        else:
            self._reduce = _nothing

    def __call__(self) -> None:
        self._reduce()


def _nothing() -> None:
    return None

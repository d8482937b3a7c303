"""The compressed gradient reducer: a dense reduction through a codec, with error feedback.

Apart from :mod:`mpisgd.comm.reduce` (the uncompressed reducers) because it is the one
reducer that encodes and decodes; it satisfies the same :class:`Reducer` protocol.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from mpisgd.comm.compress import Codec, ErrorFeedback
from mpisgd.comm.reduce import FreeOnExit


class CompressedAllreduce(FreeOnExit):
    """Collective over ``comm``: ``self(step)`` sums ``buf[:n]`` through a codec, with this
    rank's error feedback, and ``buf[n:]`` (the loss, rows and votes) exactly.

    Summable codecs (randomk: the same positions on every rank) ``Allreduce`` their
    values. The others ``Allgather`` every rank's fixed-size encoding and every rank
    decodes and adds them in rank order, so the sum is bitwise the same everywhere. An
    allgather of p encodings scales with p, where a sparse reduction tree would not;
    at the ratios where compression pays (a top 1 % sends 12 bytes per 1 % of entries,
    0.12 of the dense vector) it stays below the dense allreduce up to about 8 ranks and
    costs one collective with no index merging, so it is the choice here (docs/performance.md
    has the model).
    """

    def __init__(self, comm: MPI.Intracomm, buf: np.ndarray, n: int, codec: Codec,
                 error_feedback: bool = True):
        self.comm, self.codec, self.method = comm, codec, f"flat+{codec.name}"
        self.inbox = self.result = buf
        self.grad, self.tail = buf[:n], buf[n:]
        self.feedback = ErrorFeedback(codec, error_feedback)
        self.mine = np.zeros(codec.nbytes, dtype=np.uint8)
        self.everyone = (None if codec.summable else
                         np.zeros((comm.Get_size(), codec.nbytes), dtype=np.uint8))
        self.scratch = np.empty(n, dtype=buf.dtype)
        # What this rank contributes per step: its encoding and the exact tail.
        self.sent_bytes = codec.nbytes + self.tail.nbytes

    @property
    def residual(self) -> np.ndarray | None:
        """This rank's error-feedback residual (None without error feedback)."""
        return self.feedback.residual

    def __call__(self, step: int = 0) -> None:
        codec = self.codec
        self.feedback.compress(self.grad, step, self.mine)
        if codec.summable:
            values = self.mine.view(codec.dtype)
            self.comm.Allreduce(MPI.IN_PLACE, values)
            codec.decode(self.mine, step, self.grad)
        else:
            self.comm.Allgather(self.mine, self.everyone)
            self.grad[:] = 0
            for row in self.everyone:   # rank order: the same sum on every rank
                codec.decode_add(row, step, self.grad, self.scratch)
        self.comm.Allreduce(MPI.IN_PLACE, self.tail)

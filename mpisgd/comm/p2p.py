"""Point-to-point pieces of the parameter-server protocol: message buffers, tags,
polling waits that do not burn a shared core, and assembling sharded vectors.

A message is one contiguous byte buffer: a 48-byte header (read as int64 or float64
slots) followed by the payload, so a push or a reply is a single MPI message with no
pickling.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
from mpi4py import MPI
from mpi4py.util.dtlib import from_numpy_dtype

TAG_PUSH = 101    # worker -> server: gradient slice + header
TAG_REPLY = 102   # server -> worker: parameter slice + header

# Header slots
H_STEP, H_COUNT, H_FLAGS, H_BASE, H_LOSS = 0, 1, 2, 3, 4  # push
H_VERSION = 0                                              # reply (flags in H_FLAGS)
HEADER_SLOTS = 6
F_LAST = 1         # push flag: the worker's final step
F_SIGNAL = 2       # push flag: this worker received SIGTERM/SIGUSR1
F_LEAVE = 4        # push flag, no gradient: another server told this worker to stop
F_PULL = 8         # push flag, no gradient (sparse): only the keys named, answered at once
F_PULL_NEXT = 16   # push flag (sparse): the keys to pull follow in a TAG_PULL message
F_STOP = 1         # reply flag: training is over for this worker
F_INTERRUPTED = 2  # reply flag: ... because of a signal (a checkpoint was written)
F_EVICTED = 4      # reply flag: the servers declared this worker dead (ps.dead_after)
TAG_PULL = 107     # worker -> server (sparse): the keys to pull, after the push
TAG_LOST = 105     # server rank 0 -> each live worker, after training: the dead ranks
TAG_STATS = 106    # each live rank -> rank 0, after a death: its statistics


class Message:
    """A reusable message buffer: ``ints``/``floats`` header views and ``payload``."""

    def __init__(self, n: int, dtype: np.dtype):
        dtype = np.dtype(dtype)
        head = HEADER_SLOTS * 8
        self.raw = np.zeros(head + n * dtype.itemsize, dtype=np.uint8)
        self.ints = self.raw[:head].view(np.int64)
        self.floats = self.raw[:head].view(np.float64)
        self.payload = self.raw[head:].view(dtype)
        self.spec = [self.raw, MPI.BYTE]
        self.nbytes = self.raw.nbytes


# A sparse message's header: the push/reply slots above, then three counts.
H_NVALS, H_NKEYS, H_NPULL = 5, 6, 7
H_NBYTES = 8   # sparse push under comm.compression: the bytes encoding its H_NVALS values
SPARSE_HEADER_SLOTS = 9
# Room past the values for an encoding longer than the values it encodes (fp16's scale
# and sign's rounding on a push of one to three keys).
ENCODING_SLACK = 16


class SparseMessage:
    """A reusable buffer for sparse pushes and replies, sent only as far as it is filled.

    After the header: ``n_keys`` int64 keys, ``n_pull`` int64 keys to pull, ``n_vals``
    values (a push: the keys' gradient; a reply: the pulled keys' parameters). The counts
    are in the header, so a receiver posts the whole capacity and reads what came.
    """

    def __init__(self, max_keys: int, max_pull: int, max_vals: int, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.head = SPARSE_HEADER_SLOTS * 8
        self.raw = np.zeros(self.head + 8 * (max_keys + max_pull)
                            + max_vals * self.dtype.itemsize + ENCODING_SLACK, dtype=np.uint8)
        self.ints = self.raw[:self.head].view(np.int64)
        self.floats = self.raw[:self.head].view(np.float64)
        self.spec = [self.raw, MPI.BYTE]   # to receive into: the whole capacity

    def _bounds(self) -> tuple[int, int, int, int]:
        k, p, v = (int(self.ints[H_NKEYS]), int(self.ints[H_NPULL]),
                   int(self.ints[H_NVALS]))
        a = self.head + 8 * k
        b = a + 8 * p
        encoded = int(self.ints[H_NBYTES])
        return a, b, b + (encoded if encoded else v * self.dtype.itemsize), v

    def fill(self, keys: np.ndarray, pull: np.ndarray, vals: np.ndarray) -> None:
        """Set the three arrays (and their counts); the header's other slots are kept."""
        self._place(keys, pull, vals.size, 0)
        _, b, c, _ = self._bounds()
        self.raw[b:c].view(self.dtype)[:] = vals

    def fill_encoded(self, keys: np.ndarray, pull: np.ndarray, n_vals: int,
                     payload: np.ndarray) -> None:
        """As :meth:`fill`, with the ``n_vals`` values as a compressed ``payload`` (uint8;
        :mod:`mpisgd.comm.sparse_compress`)."""
        self._place(keys, pull, n_vals, payload.nbytes)
        _, b, c, _ = self._bounds()
        self.raw[b:c] = payload

    def _place(self, keys: np.ndarray, pull: np.ndarray, n_vals: int, n_bytes: int) -> None:
        self.ints[H_NKEYS], self.ints[H_NPULL], self.ints[H_NVALS] = (keys.size, pull.size,
                                                                      n_vals)
        self.ints[H_NBYTES] = n_bytes
        a, b, c, _ = self._bounds()
        if c > self.raw.size:
            raise ValueError(f"a sparse message of {keys.size} keys, {pull.size} pulls and "
                             f"{n_vals} values exceeds its capacity of {self.raw.size} bytes")
        self.raw[self.head:a].view(np.int64)[:] = keys
        self.raw[a:b].view(np.int64)[:] = pull

    def encoded(self) -> bool:
        return bool(self.ints[H_NBYTES])

    def payload(self) -> np.ndarray:
        """The values' bytes, as sent (compressed when :meth:`encoded`)."""
        _, b, c, _ = self._bounds()
        return self.raw[b:c]

    def keys(self) -> np.ndarray:
        a, _, _, _ = self._bounds()
        return self.raw[self.head:a].view(np.int64)

    def pull(self) -> np.ndarray:
        a, b, _, _ = self._bounds()
        return self.raw[a:b].view(np.int64)

    def vals(self) -> np.ndarray:
        """The values (of a message that is not :meth:`encoded`)."""
        _, b, c, _ = self._bounds()
        return self.raw[b:c].view(self.dtype)

    @property
    def nbytes(self) -> int:
        """The bytes in use (what a send moves)."""
        return self._bounds()[2]

    def send_spec(self) -> list:
        return [self.raw[:self.nbytes], MPI.BYTE]


class Poller:
    """Waits for any of a list of requests without spinning a shared core.

    ``spin``: the core is this rank's own (no more ranks on the node than cores), so it
    tests in a tight loop, as MPI's own blocking waits do: a push is answered within
    microseconds. Otherwise it tests, then sleeps with exponential back-off from 20 us
    up to ``max_sleep``: a sleeping server leaves the core to the workers it waits for,
    at the price of a wake-up latency (measured 171 us per push and reply of a 101-float
    logistic model at 2 ranks on 2 cores with back-off, the worker's gradient 226 us:
    docs/performance.md). ``on_idle(seconds_without_progress)`` runs between polls (the
    stall watchdog), at most every ``IDLE_EVERY`` seconds while spinning; when it returns
    true, the wait returns no request (the caller has something else to do first).
    """

    IDLE_EVERY = 0.01

    def __init__(self, max_sleep: float, on_idle: Callable[[float], None],
                 spin: bool = False):
        self.max_sleep = max_sleep
        self.on_idle = on_idle
        self.spin = spin
        self.last_progress = time.monotonic()

    def wait_some(self, requests: list[MPI.Request]) -> list[int]:
        if self.spin:
            return self._spin(requests)
        delay = 0.0
        while True:
            done = MPI.Request.Testsome(requests)
            if done:
                self.last_progress = time.monotonic()
                return done
            if self.on_idle(time.monotonic() - self.last_progress):
                return []
            time.sleep(delay)
            delay = min(max(2 * delay, 2e-5), self.max_sleep)

    def _spin(self, requests: list[MPI.Request]) -> list[int]:
        testsome, clock = MPI.Request.Testsome, time.monotonic
        next_idle = clock() + self.IDLE_EVERY
        while True:
            done = testsome(requests)
            if done:
                self.last_progress = clock()
                return done
            now = clock()
            if now >= next_idle:
                if self.on_idle(now - self.last_progress):
                    return []
                next_idle = now + self.IDLE_EVERY


def assemble(comm: MPI.Intracomm, full: np.ndarray, mine: np.ndarray,
             owners: dict[int, tuple[int, int]]) -> None:
    """Collective over ``comm``: every rank gets ``full`` from the slices their owners hold.

    ``owners`` maps a rank to the range [lo, hi) of ``full`` it holds (servers);
    every other rank contributes nothing. ``mine`` is this rank's slice (may be empty).
    """
    size = comm.Get_size()
    counts = [owners[r][1] - owners[r][0] if r in owners else 0 for r in range(size)]
    displs = [owners[r][0] if r in owners else 0 for r in range(size)]
    mpi_type = from_numpy_dtype(full.dtype)
    comm.Allgatherv([np.ascontiguousarray(mine), mpi_type], [full, counts, displs, mpi_type])

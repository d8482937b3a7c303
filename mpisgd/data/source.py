"""Reading chunks from storage during training: retries, skipping, fault injection and a
one-ahead background prefetch.

A failed read (an ``OSError`` from HDF5, or an injected fault) is retried up to
``data.read_retries`` times, waiting ``data.retry_delay`` seconds, doubled after each try,
with the shard's file reopened. A chunk that still fails either stops the job with an
error naming the file, the dataset and the rows (``data.on_read_error = "fail"``), or is
skipped, counted and reported at the end (``"skip"``). Nothing is skipped silently.

Prefetch: reads run on one background thread (h5py serialises HDF5 calls anyway, and the
numba kernels release the GIL), so the next chunk is read while this one is computed.
All reads go through that one thread, which owns the open files.
"""

from __future__ import annotations

import errno
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from mpisgd.data.checks import check_values
from mpisgd.data.csr_read import CsrReader
from mpisgd.data.format import DatasetInfo
from mpisgd.data.read import DatasetReader
from mpisgd.errors import DataError


class FaultInjector:
    """Test hook (``[debug]``): reads of files whose path contains ``pattern`` fail the
    first ``times`` times on this rank, then with probability ``prob`` (seeded per rank)."""

    def __init__(self, pattern: str, times: int, prob: float, rank: int):
        self.pattern, self.times, self.prob = pattern, times, prob
        self.rng = np.random.default_rng([rank, 0xFA17])
        self.tries: dict[str, int] = {}

    def check(self, path: str) -> None:
        if not self.pattern or self.pattern not in path:
            return
        n = self.tries.get(path, 0)
        self.tries[path] = n + 1
        if n < self.times or (self.prob and self.rng.random() < self.prob):
            raise OSError(errno.EIO, f"injected read fault (debug.read_fail_file, try {n + 1})")


class ChunkReader:
    """Reads global row ranges that lie within one shard, with retries, for one rank.

    ``request(key, lo, hi)`` starts a read (in the background with prefetch);
    ``get(key)`` returns ``(X, y)`` or None for a skipped chunk; X is a
    :class:`~mpisgd.data.csr.CsrBlock` for a CSR dataset (its values checked by the
    reader when ``data.check_values``). ``stats`` counts chunks,
    bytes, retries, skipped chunks/rows and seconds spent waiting for data.
    """

    def __init__(self, info: DatasetInfo, data_cfg, debug_cfg, rank: int):
        self.info = info
        self.retries, self.delay = data_cfg.read_retries, data_cfg.retry_delay
        self.skip = data_cfg.on_read_error == "skip"
        self.check = data_cfg.check_values
        self.faults = FaultInjector(debug_cfg.read_fail_file, debug_cfg.read_fail_times,
                                    debug_cfg.read_fail_prob, rank)
        self.csr = info.layout == "csr"
        self.reader = (CsrReader(info, check_values=self.check) if self.csr
                       else DatasetReader(info))
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="mpisgd-read") \
            if data_cfg.prefetch else None
        self.pending: dict[object, Future | tuple] = {}
        self.stats = {"chunks": 0, "bytes": 0, "retries": 0, "skipped_chunks": 0,
                      "skipped_rows": 0, "wait_s": 0.0}
        self.skipped: list[str] = []

    def request(self, key, lo: int, hi: int) -> None:
        """Start reading rows [lo, hi) under ``key`` (no-op if already requested)."""
        if key in self.pending:
            return
        if self.pool is None:
            self.pending[key] = (lo, hi)
        else:
            self.pending[key] = self.pool.submit(self._read, lo, hi)

    def get(self, key, lo: int, hi: int):
        """``(X, y)`` of rows [lo, hi) (requested under ``key`` or not), or None if skipped."""
        self.request(key, lo, hi)
        job = self.pending.pop(key)
        t0 = time.perf_counter()
        out = self._read(*job) if isinstance(job, tuple) else job.result()
        self.stats["wait_s"] += time.perf_counter() - t0
        return out

    def forget(self, keep) -> None:
        """Drop requests whose key is not in ``keep`` (a worker that skipped ahead)."""
        for key in [k for k in self.pending if k not in keep]:
            job = self.pending.pop(key)
            if isinstance(job, Future):
                job.cancel()

    def _read(self, lo, hi):
        lo, hi = int(lo), int(hi)
        shard, _ = self.info.locate(lo)
        path = self.info.shards[shard]
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retries"] += 1
                time.sleep(self.delay * 2 ** (attempt - 1))
                self.reader.close()   # reopen: a handle that failed may stay broken
            try:
                self.faults.check(path)
                X, y = self.reader.read(lo, hi)
                break
            except (OSError, DataError) as exc:
                last = exc
        else:
            where = (f"rows [{lo - self.info.offsets[shard]}, {hi - self.info.offsets[shard]}) "
                     f"of datasets X and y in '{path}'")
            if not self.skip:
                raise DataError(f"cannot read {where} after {self.retries + 1} tries: "
                                f"{last}; set data.on_read_error = 'skip' to skip such "
                                f"chunks and report them")
            self.stats["skipped_chunks"] += 1
            self.stats["skipped_rows"] += hi - lo
            self.skipped.append(where)
            return None
        if self.check and not self.csr:
            check_values(X, y, self.info, f"rows [{lo}, {hi}) of '{path}'", first_row=lo)
        self.stats["chunks"] += 1
        self.stats["bytes"] += X.nbytes + y.nbytes
        return X, y

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.reader.close()

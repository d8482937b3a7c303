"""The compute-cost report: where each rank's time went, what it sent, and how close the
gradient kernel came to the machine's memory bandwidth."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
from numba import prange

from mpisgd.errors import OutputError
from mpisgd.kernels.options import pjit
from mpisgd.runtime.paths import cache_dir
from mpisgd.store.atomic import write_text

CATEGORIES = ("setup", "data", "compute", "comm", "wait", "eval", "log", "checkpoint")
# The kernel's read rate is only said when its data ranks computed this long (median):
# below it the rate measures the fixed cost of each step (a Python call, waking the
# threads, a minibatch of a few KiB) and the timer's noise, not memory traffic. A short
# run's "0.01 GB/s vs 8.6 GB/s" reads as a slow kernel when it is a short run.
MEASURABLE_COMPUTE_S = 1.0


def rank_report(timers: dict, wall: float, rank: int, bytes_sent: int,
                bytes_received: int) -> dict:
    """One rank's split of its wall time; ``other`` is what no timer covered."""
    out = {"rank": rank, **{k: float(timers.get(k, 0.0)) for k in CATEGORIES}}
    out["other"] = wall - sum(out[k] for k in CATEGORIES)
    out.update(bytes_sent=int(bytes_sent), bytes_received=int(bytes_received))
    return out


@pjit
def _sum(a):
    s = 0.0
    for i in prange(a.shape[0]):   # a parallel reduction (a plain range stays serial)
        s += a[i]
    return s


def memory_bandwidth() -> float:
    """Bytes/s of a multi-threaded sum over 256 MiB, measured once per host and cached."""
    path = cache_dir() / f"membw-{socket.gethostname()}.json"
    try:
        return float(json.loads(path.read_text())["read_Bps"])
    except (OSError, ValueError, KeyError):
        pass
    a = np.ones(64 * 1024 * 1024, dtype=np.float32)
    _sum(a[:1024])
    best = min(_timed(_sum, a) for _ in range(5))
    bw = a.nbytes / best
    try:   # a cache: a host that cannot keep it measures again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"read_Bps": bw, "measured": time.time()}))
    except (OSError, OutputError):
        pass
    return bw


def _timed(fn, a) -> float:
    t0 = time.perf_counter()
    fn(a)
    return time.perf_counter() - t0


def summarise(ranks: list[dict], wall: float) -> dict:
    """Rank 0: the report in summary.json.

    The kernel's achieved bandwidth is each data rank's bytes of X read by its gradient
    passes over its compute time (the median over ranks that hold rows); on an
    oversubscribed node that time includes waiting for a core.
    """
    shares = {k: float(np.mean([r[k] for r in ranks]) / wall) for k in (*CATEGORIES, "other")}
    data_ranks = [r for r in ranks if r["x_bytes_read"] and r["compute"] > 0]
    rates = [r["x_bytes_read"] / r["compute"] for r in data_ranks]
    kernel_bw = float(np.median(rates)) if rates else 0.0
    compute = float(np.median([r["compute"] for r in data_ranks])) if data_ranks else 0.0
    machine = memory_bandwidth()
    return {"wall_time_s": wall, "ranks": ranks, "mean_share": shares,
            "kernel_read_GBps": kernel_bw / 1e9, "machine_read_GBps": machine / 1e9,
            "kernel_share_of_machine": kernel_bw / machine if machine else None,
            "kernel_compute_s": compute,
            "kernel_rate_measurable": compute >= MEASURABLE_COMPUTE_S,
            "bytes_sent_total": sum(r["bytes_sent"] for r in ranks)}


def describe(c: dict) -> str:
    """The printed line of the report ``c`` (see :func:`summarise`): the time split, the
    kernel's read rate against the machine's when it was measurable, the bytes sent."""
    split = ", ".join(f"{k} {100 * v:.1f}%" for k, v in c["mean_share"].items() if v >= 0.0005)
    rate = ""
    if c.get("kernel_rate_measurable"):
        rate = (f"; gradient kernel {c['kernel_read_GBps']:.2f} GB/s of X read vs "
                f"{c['machine_read_GBps']:.1f} GB/s machine read bandwidth")
    return (f"mpisgd: time split (mean over ranks): {split}{rate}; "
            f"{c['bytes_sent_total'] / 1e6:.1f} MB sent in all")

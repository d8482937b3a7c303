"""Launched under mpiexec with a timeout by test_shm.py: SharedArray and
HierarchicalAllreduce at any layout.

Emulated nodes come from MPISGD_RANKS_PER_NODE, the fallback from MPISGD_NO_SHM. Every
check is collective (all ranks learn every rank's verdict), so a failure ends the job on
every rank with one message instead of a hang. Rank 0 prints ``OK ...`` and one
``WINDOWS`` line (bytes each world rank allocated for the reducer's window).
"""

import hashlib
import json
import os
import sys
import time

import numpy as np
from mpi4py import MPI

from mpisgd.comm import make_topology
from mpisgd.comm import reduce as reduce_module
from mpisgd.comm.reduce import BufferAllreduce, HierarchicalAllreduce, make_reducer
from mpisgd.comm.shm import SharedArray, shm_disabled
from mpisgd.errors import ConfigError

CYCLES = int(sys.argv[1]) if len(sys.argv) > 1 else 200
SIZES = (1, 7, 1000, 10**6)
RTOL = {np.float32: 1e-6, np.float64: 1e-12}

topo = make_topology()
saved_budgets = (reduce_module.SINGLE_WINDOW_BYTES, reduce_module.CHUNK_WINDOW_BYTES,
                 reduce_module.CROWDED_WINDOW_BYTES)
world, rank, size = topo.world, topo.rank, topo.size
shm_on = not shm_disabled()
expect_shared = shm_on and topo.local_size > 1
done = []


def check(name: str, ok: bool, detail: str = "") -> None:
    """Collective over the world: every rank stops if any rank's ``ok`` is False."""
    verdicts = world.allgather((bool(ok), detail))
    bad = [(r, d) for r, (o, d) in enumerate(verdicts) if not o]
    if bad:
        if rank == 0:
            print(f"FAIL {name}: " + "; ".join(f"rank {r}: {d}" for r, d in bad), flush=True)
        raise SystemExit(1)
    done.append(name)


def digest(a: np.ndarray) -> str:
    return hashlib.sha1(a.tobytes()).hexdigest()


# 1. A SharedArray is one memory per node: each rank writes its row, all read all rows.
with SharedArray(topo.node, (topo.local_size, 3), np.int64) as sa:
    sa.array[topo.local_rank] = [rank, topo.local_rank, 7]
    sa.sync()
    seen = sa.array.copy()
    sa.sync()
    # Bytes allocated: all on local rank 0 when shared, a private copy on every rank if not.
    sized = sa.window_bytes == (sa.nbytes if not sa.shared or topo.local_rank == 0 else 0)
    mine = seen[topo.local_rank].tolist() == [rank, topo.local_rank, 7]
    shared = sa.shared
    others = shared == expect_shared or topo.local_size == 1
    if shared:
        others = others and seen[:, 1].tolist() == list(range(topo.local_size))
        others = others and seen[:, 0].tolist() == list(range(rank - topo.local_rank,
                                                               rank - topo.local_rank
                                                               + topo.local_size))
check("shared array", mine and others and sized,
      f"shared={shared} bytes={sa.window_bytes} seen={seen.tolist()}")
sa.free()   # a second free (after the context manager's) is a no-op

# 2. Hierarchical sum equals the flat Allreduce, is the same on every rank, for each size.
for dtype in (np.float32, np.float64):
    for n in SIZES:
        rng = np.random.default_rng(1000 + rank)
        data = rng.standard_normal(n).astype(dtype)
        flat, ours = data.copy(), data.copy()
        BufferAllreduce(world, flat)()
        red = HierarchicalAllreduce(topo, ours)
        red()
        # Error bound of a sum in any order: relative to the sum of magnitudes.
        scale = np.abs(data).astype(np.float64)
        world.Allreduce(MPI.IN_PLACE, scale)
        err = np.abs(ours.astype(np.float64) - flat) - RTOL[dtype] * scale
        digests = world.allgather(digest(ours))
        check(f"equal flat {np.dtype(dtype).name} n={n}", err.max() <= 0,
              f"worst excess {err.max():.3g}")
        check(f"same on all ranks {np.dtype(dtype).name} n={n}", len(set(digests)) == 1,
              f"{len(set(digests))} different results")
        if n == 1000 and dtype is np.float64:
            windows = world.allgather(red.window_bytes)
            locals_ = world.allgather(topo.local_size)
        red.free()
        red.free()   # idempotent

# 3. One window per node: only local rank 0 allocated, once per node of more than one rank.
firsts = world.allgather(topo.local_rank == 0)
nodes_with_peers = sum(1 for r in range(size) if firsts[r] and locals_[r] > 1)
if shm_on:
    ok = all((w > 0) == (f and loc > 1) for w, f, loc in zip(windows, firsts, locals_))
    ok = ok and sum(1 for w in windows if w) == nodes_with_peers
else:
    ok = not any(windows)
check("one window per node", ok, f"windows={windows}")

# 4. Back-to-back calls with changing data, exact in float64: a missing sync shows as a
# stale row or a half-written result. Random short sleeps shuffle the ranks' arrival. A
# small window budget cuts the larger buffer into many chunks, so the pipeline's slot
# reuse within a call and across calls is exercised at every layout.
budgets = ("SINGLE_WINDOW_BYTES", "CHUNK_WINDOW_BYTES", "CROWDED_WINDOW_BYTES")
for name in budgets:
    setattr(reduce_module, name, 1 << 20)
chunk_counts = []
for n in (7, 300_001):
    buf = np.empty(n)
    red = HierarchicalAllreduce(topo, buf)
    jitter = np.random.default_rng(rank)
    base = np.arange(n) % 13
    bad = []
    for k in range(50):
        buf[:] = (rank + 1) * (k + 1) + base
        if jitter.random() < 0.3:
            time.sleep(jitter.random() * 2e-4)
        red()
        expect = (k + 1) * size * (size + 1) / 2 + size * base
        if not np.array_equal(buf, expect):
            bad.append(k)
    chunks = red.chunks
    chunk_counts.append(chunks)
    red.free()
    check(f"50 back-to-back calls n={n}", not bad, f"{chunks} chunks, wrong at calls {bad[:5]}")
for name, value in zip(budgets, saved_budgets):
    setattr(reduce_module, name, value)

# 4b. Direct: each rank writes into its inbox (a row of the window when the node shares
# one), the sum is in result, bitwise what the copying reducer gives, the same memory on
# every rank of the node; back-to-back calls with jittered arrival stay exact. A rank may
# write its own slice of result between calls (NodeParams finishes the gradient there).
for n in (7, 1000, 300_001):
    rng = np.random.default_rng(2000 + rank)
    data = rng.standard_normal(n)
    copied = data.copy()
    with HierarchicalAllreduce(topo, copied) as ref, \
            make_reducer("hierarchical", topo, np.empty(n), direct=True) as red:
        ref()
        red.inbox[:] = data
        red()
        same = np.array_equal(red.result, copied)
        direct = red.direct == (red.window is not None) == expect_shared
        if red.direct:
            base = red.window.array
            shared = (np.shares_memory(red.inbox, base) and np.shares_memory(red.result, base)
                      and not np.shares_memory(red.inbox, red.result))
        else:
            shared = red.inbox is red.result
        jitter, bad = np.random.default_rng(rank), []
        lo, hi = reduce_module.column_slice(n, topo.local_size, topo.local_rank, 8)
        for k in range(30):
            red.inbox[:] = (rank + 1) * (k + 1) + np.arange(n) % 13
            if jitter.random() < 0.3:
                time.sleep(jitter.random() * 2e-4)
            red()
            expect = (k + 1) * size * (size + 1) / 2 + size * (np.arange(n) % 13)
            if not np.array_equal(red.result, expect):
                bad.append(k)
            world.Barrier()            # everyone has read the whole result; now
            red.result[lo:hi] = -1.0   # this rank's slice, scribbled on: the next sum rewrites it
    check(f"direct n={n}", same and direct and shared and not bad,
          f"same={same} direct={red.direct} shared={shared} wrong at calls {bad[:5]}")

# 5. make_reducer: the named class, "auto" by node layout and size, a bad name rejected.
small, big = np.zeros(4), np.zeros(1 << 17)
picks = []
for method, buf in (("flat", small), ("hierarchical", small), ("auto", small), ("auto", big)):
    with make_reducer(method, topo, buf) as red:
        buf[:] = rank
        red()
        picks.append(red.method if buf[0] == size * (size - 1) / 2 else "wrong sum")
auto_big = "hierarchical" if size > topo.node_count else "flat"
try:
    make_reducer("ring", topo, small)
    rejected = False
except ConfigError as exc:
    rejected = "comm.allreduce" in str(exc)
check("make_reducer", picks == ["flat", "hierarchical", "flat", auto_big] and rejected,
      f"picks={picks} rejected={rejected}")


# 6. Create/free cycles leak neither memory nor shared-memory mappings or files.
def rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def shm_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "/dev/shm/" in line)


def dev_shm() -> int:
    return len(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else 0


def cycle(k: int) -> None:
    with SharedArray(topo.node, (1 << 18,), np.float32) as sa:   # 1 MiB
        if topo.local_rank == 0:
            sa.array[:] = k
        sa.sync()


for k in range(10):   # warm up: first windows grow MPI's own pools
    cycle(k)
world.Barrier()
rss0, maps0, files0 = rss_kb(), shm_maps(), dev_shm()
t0 = time.perf_counter()
for k in range(CYCLES):
    cycle(k)
world.Barrier()
rss1, maps1, files1 = rss_kb(), shm_maps(), dev_shm()
growth = rss1 - rss0
# A leaked 1 MiB window per cycle would add CYCLES MiB; allow 8 MiB of allocator noise.
check(f"{CYCLES} create/free cycles", growth < 8192 and maps1 == maps0,
      f"RSS +{growth} kB, /dev/shm mappings {maps0} -> {maps1}")
# /dev/shm is shared with every other job on the machine: allow a few strangers' files,
# far fewer than one leaked file per cycle per node.
files = world.allgather(files1 - files0)
check("/dev/shm entries", max(files) < min(20, CYCLES), f"{files1 - files0:+d} entries")
cycle_ms = (time.perf_counter() - t0) / max(CYCLES, 1) * 1e3

counts = world.gather(len(done))
topo.free()
if rank == 0:
    print("WINDOWS", json.dumps({"bytes": windows, "local_sizes": locals_}))
    print(f"back-to-back calls in {chunk_counts} chunks")
    print(f"cycles: {cycle_ms:.2f} ms per create/free, RSS +{growth} kB on rank 0")
    print("OK", size, topo.node_count, "shared" if shm_on else "private", counts)

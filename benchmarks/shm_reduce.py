"""Hierarchical (shared-window) allreduce versus MPI's own Allreduce, on one node.

Run under MPI, one job at a time:  mpiexec -n 8 python benchmarks/shm_reduce.py [--quick]

For float32 vectors of 1 KiB to 64 MiB (powers of 4): the time per call of a bare
``COMM_WORLD.Allreduce(IN_PLACE, buf)`` and of mpisgd's three reducers: "flat"
(``make_reducer("flat")``: one Allreduce on mpisgd's duplicated communicator), the
shared-memory ``HierarchicalAllreduce`` with every rank on one physical node
(``MPISGD_RANKS_PER_NODE`` is ignored here), and the same reducer two-level over two
emulated nodes of P/2 ranks (window within a node, leaders' Allreduce across; from 4
ranks); each hierarchical reducer also "direct" (``direct=True``: the input is written
in the window and the sum read there, as training does; the copying one copies each
rank's buffer in and the sum out). No reducer's input is rewritten between calls: in
training the gradient is written once per step into whichever buffer the reducer reads,
so that write costs all of them the same. All measured interleaved repeat by repeat so
that drift on a shared machine hits them alike. Medians over repeats with [min, max];
each repeat is the slowest rank's mean over a batch of calls; a speedup is the median of
the per-repeat ratios bare / mpisgd. Bus bandwidth is 2(p-1)/p * bytes / time (the data
an optimal allreduce moves per rank), printed beside the memory-copy bandwidth of
``np.copyto`` on a 64 MiB array measured in the same run, by one rank alone and by all
ranks at once. Rank 0 prints a Markdown table and writes
benchmarks/results/shm_reduce_<P>.json (``_<P>_quick.json`` with --quick).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpisgd.runtime.launch_env import tune_for_oversubscription  # noqa: E402

tune_for_oversubscription()

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from benchmarks.common import per_call, stats, write_json  # noqa: E402
from mpisgd.comm import make_topology  # noqa: E402
from mpisgd.comm.reduce import (  # noqa: E402
    HIERARCHICAL_MIN_BYTES,
    HierarchicalAllreduce,
    auto_method,
    make_reducer,
    node_shape,
)

COPY_BYTES = 64 << 20






def copy_bandwidth(comm, repeats: int) -> dict:
    """Collective over ``comm``: bytes/s of np.copyto on COPY_BYTES, rank 0 alone and all ranks."""
    src = np.ones(COPY_BYTES // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    np.copyto(dst, src)
    alone = []
    for _ in range(repeats):
        comm.Barrier()
        if comm.Get_rank() == 0:
            t0 = time.perf_counter()
            np.copyto(dst, src)
            alone.append(COPY_BYTES / (time.perf_counter() - t0))
    together = [COPY_BYTES * comm.Get_size() / per_call(lambda: np.copyto(dst, src), 1, comm)
                for _ in range(repeats)]
    return {"one_rank_Bps": stats(alone) if alone else None, "all_ranks_Bps": stats(together)}


def reducers(nbytes: int, comm, topo, two_nodes) -> dict:
    """Collective over the world: name -> a call summing its own float32 vector."""
    # Zeros stay zeros: no overflow, no denormals.
    bare_buf = np.zeros(nbytes // 4, dtype=np.float32)
    out = {"allreduce": lambda: comm.Allreduce(MPI.IN_PLACE, bare_buf),
           "flat": make_reducer("flat", topo, np.zeros_like(bare_buf)),
           "hierarchical": HierarchicalAllreduce(topo, np.zeros_like(bare_buf)),
           "direct": HierarchicalAllreduce(topo, np.zeros_like(bare_buf), direct=True)}
    if two_nodes is not None:
        out["two_level"] = HierarchicalAllreduce(two_nodes, np.zeros_like(bare_buf))
        out["two_level_direct"] = HierarchicalAllreduce(two_nodes, np.zeros_like(bare_buf),
                                                        direct=True)
    return out


def measure(nbytes: int, repeats: int, comm, topo, two_nodes) -> dict:
    """Collective over the world: every reduction of one float32 vector of ``nbytes``."""
    calls_of = reducers(nbytes, comm, topo, two_nodes)
    # About 30 ms of calls per batch on 2 cores, at least 3 calls.
    calls = max(3, min(1000, int(3e-2 / (nbytes * comm.Get_size() / 2e9 + 3e-5))))
    for fn in calls_of.values():   # warm up: first touch of the pages, MPI's buffers
        per_call(fn, calls, comm)
    times = {name: [] for name in calls_of}
    for _ in range(repeats):
        for name, fn in calls_of.items():
            times[name].append(per_call(fn, calls, comm))
    for name, fn in calls_of.items():
        if name != "allreduce":
            fn.free()
    p = comm.Get_size()
    bus = 2 * (p - 1) / p * nbytes
    # What comm.allreduce = "auto" gives a training job of this size (its reducer is direct).
    auto = auto_method(nbytes, *node_shape(topo), direct=True)
    row = {"bytes": nbytes, "elements": nbytes // 4, "calls": calls,
           "auto": "direct" if auto == "hierarchical" else "flat"}
    for name, ts in times.items():
        row[f"{name}_s"] = stats(ts)
        row[f"busbw_{name}_Bps"] = bus / statistics.median(ts)
        if name != "allreduce":
            # Paired: each repeat ran both back to back, so drift cancels in the ratio.
            key = "speedup" if name == "hierarchical" else f"speedup_{name}"
            row[key] = statistics.median(b / o for b, o in zip(times["allreduce"], ts))
    row["speedup_auto"] = row[f"speedup_{row['auto']}"]
    return row


# The in-training comparison: softmax regression with 2,500 features and 100 classes,
# 250,100 parameters, so [gradient, tail] is 1 MiB of float32.
TRAINING_JOB = ["model.name='softmax'", "data.synth.kind='multiclass'",
                "data.synth.rows=4000", "data.synth.features=2500", "data.synth.classes=100",
                "data.synth.dtype='float32'", "train.batch_size=64", "train.epochs=1",
                "train.measure_wait=true", "output.progress='none'", "output.save_model=false",
                "optimizer.name='sgd'", "optimizer.lr=0.05"]


def in_training(comm, topo, repeats: int) -> dict:
    """Collective: the reduction's time per step inside training (rank 0's "comm" timer,
    a barrier before each reduction taking the wait for the slowest rank apart), flat
    against hierarchical (direct), interleaved repeat by repeat."""
    import contextlib
    import io

    from mpisgd.config import load_config
    from mpisgd.runtime.resources import rank_threads
    from mpisgd.train import run

    times: dict[str, list[float]] = {"flat": [], "hierarchical": []}
    for k in range(repeats + 1):   # the first round generates the data and warms up
        for method in times:
            out = ROOT / "benchmarks" / "results" / "runs" / f"shm-train-{method}"
            cfg = load_config(None, [*TRAINING_JOB, f"comm.allreduce='{method}'"],
                              out=str(out))
            with contextlib.redirect_stdout(io.StringIO()), rank_threads(topo.local_size):
                summary = run(cfg, topo)
            per_step = comm.bcast(summary["cost"]["ranks"][0]["comm"] / summary["steps"]
                                  if comm.Get_rank() == 0 else None, root=0)
            if k:
                times[method].append(per_step)
    ratios = [f / h for f, h in zip(times["flat"], times["hierarchical"])]
    return {"job": TRAINING_JOB, "flat_s_per_step": stats(times["flat"]),
            "hierarchical_s_per_step": stats(times["hierarchical"]),
            "speedup": stats(ratios)}


def us(s: dict) -> str:
    return f"{s['median']*1e6:,.1f} [{s['min']*1e6:,.1f}, {s['max']*1e6:,.1f}]"


def human(nbytes: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} B"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    os.environ.pop("MPISGD_RANKS_PER_NODE", None)   # one physical node, by construction
    comm = MPI.COMM_WORLD
    topo = make_topology()
    p = comm.Get_size()
    two_nodes = make_topology(p // 2) if p >= 4 else None
    if topo.node_count != 1 and comm.Get_rank() == 0:
        print(f"warning: the ranks span {topo.node_count} nodes; this benchmark is meant "
              f"for one node", file=sys.stderr)
    top = 4 << 20 if args.quick else 64 << 20
    sizes = [1 << k for k in range(10, top.bit_length(), 2)]
    repeats = 3 if args.quick else 7
    load_before = os.getloadavg()
    copy = copy_bandwidth(comm, repeats)
    rows = [measure(b, repeats, comm, topo, two_nodes) for b in sizes]
    training = in_training(comm, topo, repeats)
    result = {"ranks": comm.Get_size(), "nodes": topo.node_count,
              "mpi": MPI.Get_library_version().splitlines()[0].strip(),
              "cores": len(os.sched_getaffinity(0)), "threshold_bytes": HIERARCHICAL_MIN_BYTES,
              "copy": copy, "sizes": rows, "training": training,
              "loadavg_1min": {"before": load_before[0], "after": os.getloadavg()[0]}}
    if comm.Get_rank() == 0:
        one, all_ = copy["one_rank_Bps"]["median"], copy["all_ranks_Bps"]["median"]
        print(f"## Shared-window allreduce vs MPI Allreduce, {p} ranks on one node "
              f"({result['cores']} cores; float32; median [min, max] us per call)\n")
        load = result["loadavg_1min"]
        print(f"Memory copy (np.copyto, 64 MiB): {one/1e9:.2f} GB/s one rank alone, "
              f"{all_/1e9:.2f} GB/s all {p} ranks together. Load average (1 min) "
              f"{load['before']:.1f} before, {load['after']:.1f} after. Speedup: median "
              f"of the per-repeat ratios.\n")
        print("| size | MPI Allreduce (us) | mpisgd flat (us) | hierarchical, 1 node (us) | "
              "direct, 1 node (us) | two-level direct, 2 nodes (us) | speedup flat / "
              "hier. / direct / two-level / two-level direct | bus bw Allreduce (GB/s) | "
              "bus bw direct (GB/s) | auto (speedup) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in rows:
            two = us(r["two_level_direct_s"]) if "two_level_s" in r else "-"
            two_x = (f"{r['speedup_two_level']:.2f} / {r['speedup_two_level_direct']:.2f}"
                     if "two_level_s" in r else "- / -")
            print(f"| {human(r['bytes'])} | {us(r['allreduce_s'])} | {us(r['flat_s'])} "
                  f"| {us(r['hierarchical_s'])} | {us(r['direct_s'])} | {two} "
                  f"| {r['speedup_flat']:.2f} / {r['speedup']:.2f} / "
                  f"{r['speedup_direct']:.2f} / {two_x} "
                  f"| {r['busbw_allreduce_Bps']/1e9:.2f} "
                  f"| {r['busbw_direct_Bps']/1e9:.2f} "
                  f"| {r['auto']} ({r['speedup_auto']:.2f}) |")
        t = training
        print(f"\nIn training (softmax, a 1 MiB float32 [gradient, tail] buffer, rank 0's "
              f"time in the reduction per step, the wait for the slowest rank apart): flat "
              f"(MPI Allreduce) {us(t['flat_s_per_step'])} us, hierarchical (direct) "
              f"{us(t['hierarchical_s_per_step'])} us; speedup {t['speedup']['median']:.2f} "
              f"[{t['speedup']['min']:.2f}, {t['speedup']['max']:.2f}]")
        write_json(f"shm_reduce_{p}", args.quick, result)   # _quick: never replaces a full run
    if two_nodes is not None:
        two_nodes.free()
    topo.free()


if __name__ == "__main__":
    main()

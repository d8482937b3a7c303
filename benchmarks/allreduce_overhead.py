"""Allreduce-mode overhead: mpisgd's per-step collective versus a bare mpi4py Allreduce.

Run under MPI:  mpiexec -n 4 python benchmarks/allreduce_overhead.py [--quick]

Two figures per buffer size, measured in this one run, interleaved repeat by repeat so
that drift on a shared machine hits both alike:
  * isolated: mpisgd's BufferAllreduce (duplicated communicator, [gradient, loss, count]
    buffer) versus ``COMM_WORLD.Allreduce(IN_PLACE, buf)`` on the same-size buffer;
  * in training: the time per step that a real training run spends in its collective
    (which includes waiting for the slowest rank) versus the bare call.
Medians over repeats with min and max. Rank 0 prints a Markdown table and writes JSON
to benchmarks/results/allreduce_overhead_<P>.json (``_<P>_quick.json`` with --quick).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpisgd.runtime.launch_env import tune_for_oversubscription  # noqa: E402

tune_for_oversubscription()

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from benchmarks.common import per_call, stats, write_json  # noqa: E402
from mpisgd.comm import make_topology  # noqa: E402
from mpisgd.comm.reduce import BufferAllreduce  # noqa: E402


def isolated(sizes, repeats, comm, dup):
    rows = []
    for n in sizes:
        buf_bare = np.ones(n)
        buf_ours = np.ones(n)
        ours = BufferAllreduce(dup, buf_ours)
        calls = max(5, min(400, int(2e7 // (n * 8 + 1e4))))
        bare_t, ours_t = [], []
        per_call(lambda: comm.Allreduce(MPI.IN_PLACE, buf_bare), calls, comm)  # warm up
        per_call(ours, calls, comm)
        for _ in range(repeats):
            bare_t.append(per_call(lambda: comm.Allreduce(MPI.IN_PLACE, buf_bare), calls, comm))
            ours_t.append(per_call(ours, calls, comm))
        rows.append({"elements": n, "bytes": n * 8, "calls": calls, "bare_s": stats(bare_t),
                     "mpisgd_s": stats(ours_t),
                     "ratio": statistics.median(ours_t) / statistics.median(bare_t)})
    return rows


def in_training(comm, topo, epochs: int):
    from mpisgd.config import load_config
    from mpisgd.runtime.resources import rank_threads
    from mpisgd.train import run

    out = ROOT / "benchmarks" / "results" / "runs" / f"overhead-{comm.Get_size()}"
    cfg = load_config(None, [f"train.epochs={epochs}", "output.progress='none'",
                             "train.measure_wait=true",
                             "output.save_model=false"], out=str(out))
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), rank_threads(topo.local_size):
        summary = run(cfg, topo)
    steps = summary["steps"]
    # Only rank 0's summary carries the cost report: every rank must take the same
    # branch below, or the ranks without it would leave the next Barrier unmatched.
    rank0 = comm.bcast(summary["cost"]["ranks"][0] if comm.Get_rank() == 0 else None, root=0)
    in_collective = rank0["comm"] / steps
    waiting = rank0["wait"] / steps
    buf = np.ones(summary["n_params"] + 4)   # the mode's [gradient, loss, rows, 2 requests]
    bare = [per_call(lambda: comm.Allreduce(MPI.IN_PLACE, buf), 500, comm) for _ in range(5)]
    return {"steps": steps, "buffer_elements": buf.size, "in_training_s_per_step": in_collective,
            "waiting_s_per_step": waiting,
            "bare_s": stats(bare), "ratio": in_collective / statistics.median(bare)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    topo = make_topology()
    sizes = [22, 1002, 100_002] + ([] if args.quick else [1_000_002])
    repeats = 3 if args.quick else 7
    result = {"ranks": comm.Get_size(), "isolated": isolated(sizes, repeats, comm, topo.world),
              "training": in_training(comm, topo, 1 if args.quick else 3),
              "env_yield": os.environ.get("MPIR_CVAR_ENABLE_HEAVY_YIELD", "")}
    if comm.Get_rank() == 0:
        print(f"## Allreduce overhead at {comm.Get_size()} ranks (median [min, max], per call)\n")
        print("| elements | bare Allreduce (us) | mpisgd BufferAllreduce (us) | ratio |")
        print("|---:|---:|---:|---:|")
        for r in result["isolated"]:
            b, o = r["bare_s"], r["mpisgd_s"]
            print(f"| {r['elements']:,} | {b['median']*1e6:.1f} "
                  f"[{b['min']*1e6:.1f}, {b['max']*1e6:.1f}] | {o['median']*1e6:.1f} "
                  f"[{o['min']*1e6:.1f}, {o['max']*1e6:.1f}] | {r['ratio']:.3f} |")
        t = result["training"]
        print(f"\nIn training (default job, {t['steps']} steps, buffer {t['buffer_elements']} "
              f"elements): {t['in_training_s_per_step']*1e6:.1f} us per step in the collective "
              f"vs bare {t['bare_s']['median']*1e6:.1f} us: ratio {t['ratio']:.2f}; waiting "
              f"for the slowest rank (a barrier before each reduction, measured apart): "
              f"{t['waiting_s_per_step']*1e6:.1f} us per step")
        # _quick: never replaces a full run
        write_json(f"allreduce_overhead_{comm.Get_size()}", args.quick, result)
    topo.free()


if __name__ == "__main__":
    main()

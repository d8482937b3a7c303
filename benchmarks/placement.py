"""Data placement on this machine: load balancing against a slow worker, and prefetch.

    python benchmarks/placement.py [--quick]     # launches its own MPI jobs, one at a time

Part 1: storage placement at 4 ranks, rank 1 reading and computing each chunk 4x slower
(``debug.slow_factor``),
32 chunks per step: epoch time of ``data.assign = "balanced"`` versus ``"static"``, runs
interleaved repeat by repeat; the speedup is the median of per-repeat ratios (aim 1.5x).

Part 2: storage placement at 2 ranks on an HDF5 dataset read cold (the page cache dropped
before each run when this process may, as root): the share of training time spent waiting
for chunk reads with ``data.prefetch`` on and off.

Writes benchmarks/results/placement.json (``_quick`` with --quick) and prints tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import MPIEXEC, ROOT, cell, job_env, stats, write_json


def run(n: int, sets: list[str], out: Path, env: dict) -> dict:
    """One mpisgd job; its summary and per-epoch records."""
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "mpisgd",
           *[w for s in sets for w in ("--set", s)], "--out", str(out), "--overwrite"]
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True, timeout=1200)
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"summary": json.loads((out / "summary.json").read_text()),
            "epochs": [e for e in epochs if "epoch" in e]}


def drop_page_cache() -> bool:
    """Drop the page cache (root only) so that reads come from the device."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def balance(tmp: Path, quick: bool, env: dict) -> dict:
    rows = 64_000 if quick else 256_000
    repeats = 2 if quick else 5
    base = [f"data.synth.rows={rows}", "data.synth.features=200", "data.synth.shards=4",
            "data.synth.dtype='float32'", "data.placement='storage'", "data.chunk_rows=1000",
            "train.batch_size=32000", "train.epochs=2", "optimizer.lr=0.1",
            "debug.slow_rank=1", "debug.slow_factor=4", "output.progress='none'",
            "output.save_model=false", "train.oracle=false"]
    times = {"static": [], "balanced": []}
    chunks = {}
    for rep in range(repeats):
        for policy in times:
            r = run(4, base + [f"data.assign='{policy}'"], tmp / f"{policy}-{rep}", env)
            times[policy].append(statistics.median(e["epoch_time_s"] for e in r["epochs"]))
            chunks[policy] = {w: p["chunks"] for w, p in
                              r["summary"]["data_io"]["per_worker"].items()}
    ratios = [s / b for s, b in zip(times["static"], times["balanced"])]
    return {"rows": rows, "epoch_time_s": {k: stats(v) for k, v in times.items()},
            "speedup": stats(ratios), "chunks_per_worker": chunks}


def prefetch(tmp: Path, quick: bool, env: dict) -> dict:
    rows = 200_000 if quick else 1_000_000
    data = tmp / "cold"
    subprocess.run([sys.executable, "-m", "mpisgd", "data", "synth", str(data),
                    "--kind", "linear", "--rows", str(rows), "--features", "100",
                    "--shards", "8", "--dtype", "float32"],
                   check=True, cwd=ROOT, env=env, capture_output=True)
    base = [f"data.train='{data}'", "data.placement='storage'", "data.chunk_rows=4096",
            "train.batch_size=8192", "train.epochs=1", "output.progress='none'",
            "output.save_model=false", "train.oracle=false"]
    out, cold = {}, []
    for rep in range(2 if quick else 3):
        for on in ("true", "false"):
            cold.append(drop_page_cache())
            r = run(2, base + [f"data.prefetch={on}"], tmp / f"p{on}-{rep}", env)
            io, s = r["summary"]["data_io"]["total"], r["summary"]
            # wait_s sums over both workers: the share of their training time
            share = io["wait_s"] / (2 * s["train_time_s"])
            out.setdefault(on, []).append(share)
    return {"rows": rows, "cache_dropped": all(cold),
            "wait_share": {("prefetch" if k == "true" else "no prefetch"): stats(v)
                           for k, v in out.items()}}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    env = job_env()
    env.setdefault("MPISGD_CACHE", str(ROOT / ".cache" / "mpisgd"))
    with tempfile.TemporaryDirectory(prefix="mpisgd-placement-") as tmp:
        part1 = balance(Path(tmp), args.quick, env)
        part2 = prefetch(Path(tmp), args.quick, env)
    print(f"## Load balancing: 4 ranks, rank 1 4x slower, {part1['rows']:,} rows, 32 chunks "
          f"per step (median [min, max])\n")
    print("| assignment | epoch time (s) | chunks per worker (last run) |")
    print("|---|---:|---|")
    for k, v in part1["epoch_time_s"].items():
        print(f"| {k} | {cell(v, '.3f')} | {part1['chunks_per_worker'][k]} |")
    print(f"\nSpeedup of balanced over static: {cell(part1['speedup'], '.2f')}x (aim 1.5x)\n")
    print(f"## Prefetch: 2 ranks, {part2['rows']:,} x 100 float32 read from storage "
          f"(page cache dropped: {part2['cache_dropped']})\n")
    print("| reads | share of training time waiting for data |")
    print("|---|---:|")
    for k, v in part2["wait_share"].items():
        print(f"| {k} | {cell(v, '.1f', 100)} % |")
    write_json("placement", args.quick, {"balance": part1, "prefetch": part2})
    return 0


if __name__ == "__main__":
    sys.exit(main())

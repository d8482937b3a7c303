"""Checkpoint cost: seconds per write (and verified load) for 10^6 and 10^7 float32
parameters with momentum state, and the share of a run that checkpoints every 60 s.

    python benchmarks/checkpoint.py [--quick]

One process, the same code path a rank takes (write_shard + commit with fsync, then
load with checksum verification). Medians over repeats with min and max.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpisgd.store import checkpoint  # noqa: E402

INTERVAL_S = 60.0


def measure(n: int, repeats: int, tmp: Path) -> dict:
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(n, dtype=np.float32)
    state = {"velocity": rng.standard_normal(n, dtype=np.float32), "step": np.array(7)}
    meta = {"model": "linear", "n_features": n - 1, "n_classes": 0, "n_params": n,
            "dtype": "float32"}
    writes, loads = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        staging = checkpoint.staging_dir(tmp, r + 1, "bench")
        entry = checkpoint.write_shard(staging, 0, 0, n, theta, state)
        path = checkpoint.commit(tmp, staging, r + 1, [entry], meta, keep=2)
        writes.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        checkpoint.load(path)
        loads.append(time.perf_counter() - t0)
    w = statistics.median(writes)
    return {"params": n, "bytes": 2 * 4 * n,
            "write_s": {"median": w, "min": min(writes), "max": max(writes)},
            "load_verify_s": {"median": statistics.median(loads), "min": min(loads),
                              "max": max(loads)},
            "overhead_at_60s": w / (INTERVAL_S + w)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    repeats = 3 if args.quick else 7
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as d:
        for n in (10**6, 10**7):
            rows.append(measure(n, repeats, Path(d)))
    print("| parameters | write s (median [min, max]) | load+verify s "
          "| share of a run checkpointing every 60 s |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        w, lv = r["write_s"], r["load_verify_s"]
        print(f"| {r['params']:,} | {w['median']:.3f} [{w['min']:.3f}, {w['max']:.3f}] | "
              f"{lv['median']:.3f} | {100 * r['overhead_at_60s']:.2f}% |")
    quick = "_quick" if args.quick else ""   # a quick run never replaces a full one
    out = ROOT / "benchmarks" / "results" / f"checkpoint{quick}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

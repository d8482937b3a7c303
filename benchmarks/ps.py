"""Parameter-server benchmarks, each comparison measured in this one run.

    python benchmarks/ps.py [--quick]

1. Throughput (samples/s) of allreduce, ps-bsp and ps-asp at 4 ranks on one logistic job.
2. One worker slowed 5x: time to reach a target training loss for bsp, bsp with one
   backup worker, ssp (s = 2) and asp.
3. A large model (10^6 float32 parameters): seconds per step with 1 and 2 servers, beside
   the server-side bound p*n/(k*B) (p workers each pushing and pulling n bytes to k
   servers whose ingest bandwidth is B, B measured here as point-to-point bandwidth).

Jobs run one after another (never two MPI jobs at once on a small machine); medians
over repeats with min and max. Writes benchmarks/results/ps.json (ps_quick.json with
--quick) and prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_json  # noqa: E402


def run_job(n: int, args: list[str], out: Path) -> dict:
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "mpisgd", *args, "--out", str(out),
           "--overwrite", "--set", "output.progress='none'", "--set", "output.save_model=false"]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=900, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    summary = json.loads((out / "summary.json").read_text())
    lines = (out / "metrics.jsonl").read_text().splitlines()
    summary["epochs_log"] = [json.loads(x) for x in lines]
    return summary


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


LOGISTIC = ["jobs/logreg.toml", "--set", "data.synth.rows=200000", "--set", "train.epochs=2",
            "--set", "optimizer.schedule='constant'", "--set", "optimizer.lr=0.2"]


def throughput(tmp: Path, repeats: int) -> dict:
    variants = {"allreduce": ["--set", "mode='allreduce'"],
                "ps-bsp": ["--set", "mode='ps'", "--set", "ps.consistency='bsp'"],
                "ps-asp": ["--set", "mode='ps'", "--set", "ps.consistency='asp'"]}
    times = {k: [] for k in variants}
    for r in range(repeats):  # interleaved: drift hits every variant alike
        for name, extra in variants.items():
            s = run_job(4, LOGISTIC + extra, tmp / f"tp-{name}-{r}")
            times[name].append(s["samples_per_s"])
    return {k: stats(v) for k, v in times.items()}


def straggler(tmp: Path) -> dict:
    """One worker 5x slower: training seconds (per-epoch log) until train loss <= target.

    The slowdown is calibrated: an unslowed bsp run gives the normal step time t, and
    the slow worker sleeps 4t per step. The target is the unslowed run's final epoch
    loss plus 2%.
    """
    base = ["jobs/logreg.toml", "--set", "optimizer.schedule='constant'",
            "--set", "optimizer.lr=0.2", "--set", "mode='ps'", "--set", "data.synth.rows=40000",
            "--set", "train.epochs=12", "--set", "train.batch_size=256"]
    ref = run_job(4, base, tmp / "slow-ref")
    step_ms = 1000 * ref["train_time_s"] / ref["steps"]
    target = ref["epochs_log"][-1]["train_loss"] * 1.02
    slow = ["--set", "debug.slow_rank=3", "--set", f"debug.slow_ms={4 * step_ms:.3f}"]
    variants = {"bsp": ["--set", "ps.consistency='bsp'"],
                "bsp+1 backup": ["--set", "ps.consistency='bsp'", "--set", "ps.backup_workers=1"],
                "ssp s=2": ["--set", "ps.consistency='ssp'", "--set", "ps.staleness=2"],
                "asp": ["--set", "ps.consistency='asp'"]}
    out = {"normal_step_ms": step_ms, "slow_ms": 4 * step_ms, "target_loss": target,
           "variants": {}}
    for name, extra in variants.items():
        s = run_job(4, base + slow + extra, tmp / f"slow-{name.replace(' ', '_')}")
        elapsed, reached = 0.0, None
        for e in s["epochs_log"]:
            elapsed += e["epoch_time_s"]
            if reached is None and e["train_loss"] <= target:
                reached = elapsed
        out["variants"][name] = {
            "seconds_to_target": reached, "final_loss": s["epochs_log"][-1]["train_loss"],
            "train_time_s": s["train_time_s"], "dropped": s["ps"]["gradients_dropped"]}
    return out


def large_model(tmp: Path, repeats: int) -> dict:
    """Softmax with 10 classes and 100,000 features: 1,000,010 float32 parameters."""
    job = ["jobs/softmax.toml", "--set", "data.synth.rows=240",
           "--set", "data.synth.features=100000",
           "--set", "data.synth.classes=10", "--set", "data.synth.shards=1",
           "--set", "data.test_fraction=0.0", "--set", "train.batch_size=24",
           "--set", "train.epochs=4", "--set", "mode='ps'", "--set", "optimizer.momentum=0.0",
           "--set", "optimizer.schedule='constant'"]
    per_step = {1: [], 2: []}
    server = {1: [], 2: []}   # rank 0 (a server): time applying updates and copying replies
    for r in range(repeats):
        for k in (1, 2):
            s = run_job(3 + k, job + ["--set", f"ps.servers={k}"], tmp / f"big-{k}-{r}")
            per_step[k].append(s["train_time_s"] / s["steps"])
            server[k].append(s["cost"]["ranks"][0]["compute"] / s["steps"])
    bw = p2p_bandwidth(4_000_040)
    n_bytes = 1_000_010 * 4
    p = 3
    bound = {k: 2 * p * n_bytes / (k * bw) for k in (1, 2)}   # push + pull per worker
    return {"params": 1_000_010, "workers": p, "p2p_bandwidth_Bps": bw,
            "seconds_per_step": {str(k): stats(v) for k, v in per_step.items()},
            "server_busy_seconds_per_step": {str(k): stats(v) for k, v in server.items()},
            "bound_seconds_per_step": {str(k): b for k, b in bound.items()}}


def p2p_bandwidth(nbytes: int) -> float:
    """Ping-pong bandwidth between two ranks (bytes/s), median of 5."""
    code = f"""
import time, numpy as np
from mpi4py import MPI
c = MPI.COMM_WORLD; b = np.zeros({nbytes}, np.uint8); ts = []
for _ in range(5):
    c.Barrier(); t = time.perf_counter()
    for _ in range(20):
        if c.rank == 0: c.Send(b, 1); c.Recv(b, 1)
        else: c.Recv(b, 0); c.Send(b, 0)
    ts.append((time.perf_counter() - t) / 40)
if c.rank == 0: print(sorted(ts)[2])
"""
    out = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", code], check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return nbytes / float(out.strip())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    repeats = 1 if args.quick else 3
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result = {"throughput_samples_per_s": throughput(tmp, repeats),
                  "straggler_5x": straggler(tmp),
                  "large_model": large_model(tmp, repeats)}
    print("## PS throughput at 4 ranks (samples/s, median [min, max])\n")
    print("| mode | samples/s |\n|---|---:|")
    for k, v in result["throughput_samples_per_s"].items():
        print(f"| {k} | {v['median']:,.0f} [{v['min']:,.0f}, {v['max']:,.0f}] |")
    st = result["straggler_5x"]
    print(f"\n## One worker slowed 5x (normal step {st['normal_step_ms']:.3f} ms, slow worker "
          f"+{st['slow_ms']:.3f} ms): training seconds to reach train loss "
          f"{st['target_loss']:.4f}\n")
    print("| consistency | seconds to target | final loss | dropped |\n|---|---:|---:|---:|")
    for k, v in st["variants"].items():
        t = "not reached" if v["seconds_to_target"] is None else f"{v['seconds_to_target']:.2f}"
        print(f"| {k} | {t} | {v['final_loss']:.4f} | {v['dropped']} |")
    lm = result["large_model"]
    print(f"\n## 10^6 float32 parameters, {lm['workers']} workers "
          f"(p2p bandwidth {lm['p2p_bandwidth_Bps']/1e9:.2f} GB/s)\n")
    print("| servers | s/step measured | server busy s/step | bound 2pn/(kB) |\n"
          "|---:|---:|---:|---:|")
    for k in ("1", "2"):
        m = lm["seconds_per_step"][k]
        b = lm["server_busy_seconds_per_step"][k]
        print(f"| {k} | {m['median']:.4f} [{m['min']:.4f}, {m['max']:.4f}] | "
              f"{b['median']:.4f} [{b['min']:.4f}, {b['max']:.4f}] | "
              f"{lm['bound_seconds_per_step'][k]:.4f} |")
    write_json("ps", args.quick, result)   # _quick: never replaces a full run


if __name__ == "__main__":
    main()

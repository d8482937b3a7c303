"""Gradient compression on this machine: bytes and time per step, and time to a target loss.

    python benchmarks/compression.py [--quick]      # launches its own MPI jobs, one at a time

Part 1 (exchange), d = 10^6 float32 at 8 ranks as 4 emulated nodes of 2: the time per
call of each reducer mpisgd's allreduce mode would use (dense flat ``Allreduce``, dense
hierarchical, and the compressed ones, each including encoding, error feedback and
decoding), measured interleaved repeat by repeat; each repeat is the slowest rank's mean
over a batch of calls. Medians over repeats with [min, max]; ratios against dense flat
are medians of the per-repeat ratios. Bytes are what one rank contributes per step.

Part 2 (training), an MLP of about 10^5 parameters (d = 10^6 makes one run take minutes
on 2 cores) on a synthetic 10-class task at 8 ranks: seconds until the epoch train loss
first reaches 1.05 x the uncompressed run's final loss (epochs' own times, summed), per
scheme.

Rank 0 prints Markdown tables and writes benchmarks/results/compression.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCHEMES = [("none (flat)", "none", "flat"), ("none (hierarchical)", "none", "hierarchical"),
           ("fp16", "fp16", "flat"), ("bf16", "bf16", "flat"), ("topk 1%", "topk", "flat"),
           ("randomk 1%", "randomk", "flat"), ("sign", "sign", "flat")]
RANKS, PER_NODE = 8, 2


def exchange(quick: bool) -> None:
    """Under MPI: time every reducer on one gradient size (part 1)."""
    import numpy as np
    from mpi4py import MPI

    from mpisgd.comm import make_topology
    from mpisgd.comm.compress import make_codec
    from mpisgd.comm.compressed_reduce import CompressedAllreduce
    from mpisgd.comm.reduce import make_reducer

    d = 10**5 if quick else 10**6
    repeats, calls = (3, 3) if quick else (7, 5)
    topo = make_topology()
    rng = np.random.default_rng(topo.rank)
    grad = rng.standard_normal(d).astype(np.float32)
    reducers = []
    for label, scheme, method in SCHEMES:
        buf = np.zeros(d + 4, dtype=np.float32)
        codec = make_codec(scheme, d, np.float32, 0.01, seed=0)
        red = (make_reducer(method, topo, buf) if codec is None
               else CompressedAllreduce(topo.world, buf, d, codec, True))
        reducers.append((label, buf, red))
    times = {label: [] for label, _, _ in reducers}
    step = 0
    for rep in range(repeats + 1):   # the first round warms up (allocations, page faults)
        for label, buf, red in reducers:
            topo.world.Barrier()
            t0 = time.perf_counter()
            for _ in range(calls):
                buf[:d] = grad   # the kernel writes a fresh gradient each step
                red(step)
                step += 1
            dt = topo.world.allreduce((time.perf_counter() - t0) / calls, op=MPI.MAX)
            if rep:
                times[label].append(dt)
    rows = []
    base = times[SCHEMES[0][0]]
    for label, buf, red in reducers:
        t = times[label]
        rows.append({"scheme": label, "bytes_per_step": int(getattr(red, "sent_bytes", buf.nbytes)),
                     "time_s": {"median": statistics.median(t), "min": min(t), "max": max(t)},
                     "speedup_vs_flat": statistics.median(b / x for b, x in zip(base, t))})
        red.free()
    if topo.rank == 0:
        print(json.dumps({"d": d, "ranks": topo.size, "nodes": topo.node_count, "rows": rows}))
    topo.free()


def training(quick: bool, workdir: Path, env: dict) -> list[dict]:
    """Part 2: time to a target loss per scheme (each run its own mpiexec job)."""
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    rows, hidden = (4000, "[100]") if quick else (16000, "[1000]")
    job = ["--set", "model.name='mlp'", "--set", f"model.hidden={hidden}",
           "--set", "data.synth.kind='multiclass'", "--set", f"data.synth.rows={rows}",
           "--set", "data.synth.features=100", "--set", "data.synth.classes=10",
           "--set", "data.synth.dtype='float32'",
           "--set", "train.epochs=6", "--set", "train.batch_size=512",
           "--set", "optimizer.lr=0.1", "--set", "optimizer.momentum=0.9",
           "--set", "output.progress='none'", "--set", "output.save_model=false",
           "--set", "train.oracle=false"]
    curves = {}
    for label, scheme, method in SCHEMES:
        out = workdir / label.split()[0].replace("%", "")
        cmd = [mpiexec, "-n", str(RANKS), sys.executable, "-m", "mpisgd", *job,
               "--set", f"comm.compression='{scheme}'", "--set", f"comm.allreduce='{method}'",
               "--set", "comm.topk_ratio=0.01", "--out", str(out), "--overwrite"]
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True, timeout=900)
        epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        epochs = [e for e in epochs if "epoch" in e]
        summary = json.loads((out / "summary.json").read_text())
        curves[label] = (epochs, summary)
    target = 1.05 * curves[SCHEMES[0][0]][0][-1]["train_loss"]
    result = []
    for label, (epochs, summary) in curves.items():
        elapsed, reached = 0.0, None
        for e in epochs:
            elapsed += e["epoch_time_s"]
            if reached is None and e["train_loss"] <= target:
                reached = elapsed
        result.append({"scheme": label, "target_loss": target, "seconds_to_target": reached,
                       "final_train_loss": epochs[-1]["train_loss"],
                       "test_accuracy": summary.get("test", {}).get("accuracy"),
                       "params": summary["n_params"],
                       "epoch_time_s": statistics.median(e["epoch_time_s"] for e in epochs)})
    return result


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--exchange", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.exchange:
        exchange(args.quick)
        return 0
    env = dict(os.environ, MPISGD_RANKS_PER_NODE=str(PER_NODE))
    env.setdefault("MPISGD_CACHE", str(ROOT / ".cache" / "mpisgd"))
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    cmd = [mpiexec, "-n", str(RANKS), sys.executable, __file__, "--exchange",
           *(["--quick"] if args.quick else [])]
    done = subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    part1 = json.loads(done.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory(prefix="mpisgd-compression-") as tmp:
        part2 = training(args.quick, Path(tmp), env)
    print(f"## Gradient exchange, d = {part1['d']:,} float32, {part1['ranks']} ranks as "
          f"{part1['nodes']} emulated nodes (median [min, max] ms per step)\n")
    print("| scheme | bytes per rank per step | time per step (ms) | vs dense flat |")
    print("|---|---:|---:|---:|")
    for r in part1["rows"]:
        t = r["time_s"]
        print(f"| {r['scheme']} | {r['bytes_per_step']:,} | {t['median'] * 1e3:.2f} "
              f"[{t['min'] * 1e3:.2f}, {t['max'] * 1e3:.2f}] | {r['speedup_vs_flat']:.2f}x |")
    print(f"\n## Time to a target loss, MLP of {part2[0]['params']:,} parameters, {RANKS} ranks "
          f"(target: 1.05 x the uncompressed final train loss = {part2[0]['target_loss']:.4f})\n")
    print("| scheme | seconds to target | final train loss | test accuracy | median epoch (s) |")
    print("|---|---:|---:|---:|---:|")
    for r in part2:
        seconds = r["seconds_to_target"]
        reached = "not reached" if seconds is None else f"{seconds:.2f}"
        acc = "" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        print(f"| {r['scheme']} | {reached} | {r['final_train_loss']:.4f} | {acc} "
              f"| {r['epoch_time_s']:.2f} |")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    name = "compression_quick.json" if args.quick else "compression.json"
    (results / name).write_text(json.dumps({"exchange": part1, "training": part2}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MLP training throughput: mpisgd allreduce mode versus PyTorch DistributedDataParallel.

    python benchmarks/mlp_ddp.py [--quick]

Same model (100 inputs, 2 hidden layers of 256 ReLU, 10 classes, float32), the same
per-rank minibatch (1024 rows), SGD with momentum, 2 processes, one thread per process
(what mpisgd picks for 2 ranks on 2 cores), gloo backend on the CPU. Both measured in
this run, interleaved over repeats; samples/s per rank, medians [min, max], and the ratio.
PyTorch is a benchmark-only dependency (pip install torch).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
ROWS, FEATURES, CLASSES, BATCH = 65536, 100, 10, 1024


def mpisgd_rate(tmp: Path, epochs: int) -> float:
    out = tmp / "mpisgd"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "mpisgd", "jobs/softmax.toml",
           "--set", "model.name='mlp'", "--set", "model.hidden=[256, 256]",
           "--set", f"data.synth.rows={ROWS}", "--set", f"data.synth.features={FEATURES}",
           "--set", f"data.synth.classes={CLASSES}", "--set", "data.synth.dtype='float32'",
           "--set", "data.test_fraction=0.0", "--set", f"train.batch_size={2 * BATCH}",
           "--set", f"train.epochs={epochs}", "--set", "optimizer.schedule='constant'",
           "--set", "output.progress='none'", "--set", "output.save_model=false",
           "--out", str(out), "--overwrite"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPISGD_NUM_THREADS="1")
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, timeout=1800, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    return summary["samples_per_s"] / 2


DDP_WORKER = r"""
import os, sys, time, torch, torch.distributed as dist
from torch import nn
rank, port, steps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(%d, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                      nn.Linear(256, %d))
ddp = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
X = torch.randn(%d // 2, %d)
y = torch.randint(0, %d, (%d // 2,))
loss_fn = nn.CrossEntropyLoss()
def step(i):
    lo = (i * %d) %% (X.shape[0] - %d)
    opt.zero_grad()
    loss_fn(ddp(X[lo:lo + %d]), y[lo:lo + %d]).backward()
    opt.step()
for i in range(5):
    step(i)
dist.barrier(); t = time.perf_counter()
for i in range(steps):
    step(i)
dist.barrier(); dt = time.perf_counter() - t
if rank == 0:
    print(steps * %d / dt)
dist.destroy_process_group()
""" % (FEATURES, CLASSES, ROWS, FEATURES, CLASSES, ROWS, BATCH, BATCH, BATCH, BATCH, BATCH)


def ddp_rate(tmp: Path, steps: int) -> float:
    script = tmp / "ddp_worker.py"
    script.write_text(DDP_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), port, str(steps)],
                              stdout=subprocess.PIPE, text=True, env=env) for r in range(2)]
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("the DDP workers failed")
    return float(outs[0].strip())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None, help="default 5 (quick: 1)")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    epochs = 2 if args.quick else 4
    steps = epochs * ROWS // (2 * BATCH)
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(repeats):
            ours.append(mpisgd_rate(Path(d), epochs))
            theirs.append(ddp_rate(Path(d), steps))
    m, t = statistics.median(ours), statistics.median(theirs)
    # Paired: each repeat ran both back to back, so drift hits both alike.
    ratios = [a / b for a, b in zip(ours, theirs)]
    ratio = statistics.median(ratios)
    print("| trainer (2 processes, 1 thread each) | samples/s per rank |\n|---|---:|")
    print(f"| mpisgd allreduce | {m:,.0f} [{min(ours):,.0f}, {max(ours):,.0f}] |")
    print(f"| PyTorch DDP (gloo) | {t:,.0f} [{min(theirs):,.0f}, {max(theirs):,.0f}] |")
    print(f"\nratio mpisgd / DDP (median of per-repeat ratios): {ratio:.2f} "
          f"[{min(ratios):.2f}, {max(ratios):.2f}] (goal >= 1.5)")
    quick = "_quick" if args.quick else ""   # a quick run never replaces a full one
    path = ROOT / "benchmarks" / "results" / f"mlp_ddp{quick}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mpisgd": ours, "ddp": theirs, "ratio": ratio,
                                "ratios": ratios,
                                "model": [FEATURES, 256, 256, CLASSES], "batch_per_rank": BATCH},
                               indent=2))


if __name__ == "__main__":
    main()

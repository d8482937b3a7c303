"""End to end: logistic regression on 1,000,000 x 100 float32, mpisgd against the others.

    python benchmarks/end_to_end.py [--quick] [--repeats N]

Every trainer sees the same data (a generated logistic dataset: 1,000,000 training rows
in 5 shards, 200,000 held-out rows from the same generator), the same model (weights
and bias from zeros), the same minibatch (1024 rows per rank, reshuffled every epoch),
the same optimizer (SGD, constant lr, heavy-ball momentum: torch's rule) and epochs:

* mpisgd, allreduce mode and ps mode (one server, one worker), 2 ranks;
* a plain mpi4py + NumPy loop with mpisgd's semantics (benchmarks/e2e_numpy.py), 2 ranks;
* PyTorch DistributedDataParallel (gloo, CPU), 2 processes, one thread each and
  PyTorch's default thread count (benchmarks/e2e_torch.py);
* a single-process PyTorch loop on the global minibatch (default threads);
* scikit-learn's SGDClassifier(loss="log_loss") with its own defaults (per-sample SGD),
  one partial_fit per epoch over a reshuffled copy.

The reference accuracy is scikit-learn's LogisticRegression (lbfgs) on the same split;
the target is the reference minus 0.5 points. Reported per trainer: samples per second
(training rows / training seconds; held-out evaluation is outside the clock everywhere)
and training seconds until the held-out accuracy, checked after every epoch, reaches the
target (ps mode logs no per-epoch accuracy: its figure is the whole run, an upper
bound). Trainers run one after another, interleaved over repeats; ratios are medians of
the per-repeat ratios. The data share of mpisgd's time comes from its cost report. Writes
benchmarks/results/end_to_end.json (end_to_end_quick.json with --quick) and prints
Markdown. PyTorch parts are skipped when torch is not installed.
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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from benchmarks.common import MPIEXEC, ROOT, cell, job_env, run_mpisgd, stats, write_json
from mpisgd.data import open_dataset, read_rows, shard_file_name, synth_to_folder
from mpisgd.runtime.paths import cache_dir

HERE = Path(__file__).resolve().parent
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TARGET_BELOW_REFERENCE = 0.005   # the target accuracy: reference minus 0.5 points


@dataclass(frozen=True)
class Settings:
    rows: int
    features: int
    epochs: int
    ranks: int = 2
    batch_per_rank: int = 1024
    lr: float = 0.1
    momentum: float = 0.9
    seed: int = 0


def dataset(rows: int, features: int) -> tuple[str, str]:
    """(train folder, test shard): one generated set of 1.2 x rows in 6 equal shards, the
    first 5 linked into a training folder, the last held out. Generated once, cached."""
    base = cache_dir() / "bench" / f"logistic-{rows}x{features}-float32"
    full = base / "all"
    if not full.exists():
        synth_to_folder("logistic", full, n_rows=rows * 6 // 5, n_features=features, seed=1,
                        dtype="float32", n_shards=6)
    train = base / "train"
    if not train.exists():
        tmp = base / f".train-{os.getpid()}"
        tmp.mkdir()
        for k in range(5):
            (tmp / shard_file_name(k, 6)).symlink_to(full / shard_file_name(k, 6))
        tmp.rename(train)
    return str(train), str(full / shard_file_name(5, 6))


def load(path: str):
    info = open_dataset(path)
    return read_rows(info, 0, info.n_rows)


def reference(train, test) -> dict:
    """scikit-learn's LogisticRegression (lbfgs, default C) on the same split."""
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    clf = LogisticRegression(max_iter=1000).fit(*train)
    return {"trainer": "LogisticRegression(lbfgs)", "accuracy": float(clf.score(*test)),
            "fit_s": time.perf_counter() - t0}


# Each trainer returns {"epochs": [{"time_s", "accuracy" (None: not measured)}],
# "samples": training rows per epoch, "final_accuracy"} plus what else it reports.

# train.shuffle_block of the block-shuffled run: measured on 500,000 x 100 float32 rows,
# one 1024-row step took 213 us with single rows, 113 us with blocks of 16, 58 us of 64,
# 46.5 us of 128, 43 us of 256 and 38.6 us contiguous (docs/performance.md).
BLOCK = 128


def mpisgd_trainer(mode: str, s: Settings, train: str, test: str, tmp: Path,
                   block: int = 0) -> dict:
    workers = s.ranks if mode == "allreduce" else s.ranks - 1   # ps: rank 0 serves
    args = ["jobs/logreg.toml", "--set", f"mode='{mode}'", "--set", f"data.train='{train}'",
            "--set", f"data.test='{test}'", "--set", "model.l2=0.0",
            "--set", f"optimizer.lr={s.lr}", "--set", f"optimizer.momentum={s.momentum}",
            "--set", "optimizer.schedule='constant'", "--set", f"train.epochs={s.epochs}",
            "--set", f"train.batch_size={s.batch_per_rank * workers}",
            "--set", f"train.seed={s.seed}", "--set", f"train.shuffle_block={block}"]
    timeline = tmp / f"timeline-{mode}-{block}.json"
    summary = run_mpisgd(s.ranks, [*args, "--timeline", str(timeline)],
                         tmp / f"mpisgd-{mode}-{block}")
    epochs = [{"time_s": e["epoch_time_s"], "accuracy": e.get("test", {}).get("accuracy")}
              for e in summary["epochs_log"]]
    cost = summary["cost"]
    data_s = max(r["data"] for r in cost["ranks"])
    return {"epochs": epochs, "samples": summary["n_train"],
            "final_accuracy": summary["test"]["accuracy"],
            "mpisgd_samples_per_s": summary["samples_per_s"],
            "data_s": data_s, "data_share_of_wall": cost["mean_share"]["data"],
            "wall_s": summary["wall_time_s"], "train_time_s": summary["train_time_s"],
            "steps": summary["steps"], "time_split": cost["mean_share"],
            # ps: rank 0 serves, rank 1 is the worker
            "step_us": step_split(timeline, summary["steps_per_epoch"],
                                  0 if mode == "allreduce" else 1)}


def step_split(timeline: Path, steps_per_epoch: int, rank: int = 0) -> dict:
    """``rank``'s median microseconds per step in each span of the timeline, and how much
    longer each epoch's first step is (it draws the epoch's permutation and this rank's
    schedule of rows)."""
    spans: dict[str, list] = {}
    for e in json.loads(timeline.read_text())["traceEvents"]:
        if e["ph"] == "X" and e["pid"] == rank:
            spans.setdefault(e["name"], []).append(e["dur"])
    out = {k: statistics.median(v) for k, v in spans.items() if len(v) > 1}
    if "compute" in spans:   # allreduce mode: one compute span per step
        firsts = spans["compute"][::steps_per_epoch]
        out["epoch_start_extra"] = statistics.mean(firsts) - out["compute"]
    return out


def numpy_trainer(s: Settings, train: str, test: str, tmp: Path) -> dict:
    out = tmp / "numpy.json"
    cmd = [MPIEXEC, "-n", str(s.ranks), sys.executable, "-m", "mpi4py",   # abort on error
           str(HERE / "e2e_numpy.py"), train, test, "--epochs", str(s.epochs),
           "--lr", str(s.lr), "--momentum", str(s.momentum),
           "--batch-per-rank", str(s.batch_per_rank), "--seed", str(s.seed), "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=1800, env=job_env(**ONE_THREAD))
    return finished(json.loads(out.read_text()))


def torch_trainer(s: Settings, train: str, test: str, tmp: Path, world: int,
                  threads: int) -> dict:
    """PyTorch on ``world`` processes (DDP when > 1); threads 0: PyTorch's default."""
    out = tmp / "torch.json"
    env = job_env(**(ONE_THREAD if threads == 1 else {}))
    if threads != 1:   # PyTorch's own default, not an inherited setting
        env.pop("OMP_NUM_THREADS", None)
    batch = s.batch_per_rank * s.ranks // world   # the same global minibatch
    cmd = [sys.executable, str(HERE / "e2e_torch.py"), train, test, "--world", str(world),
           "--port", free_port(), "--threads", str(threads), "--epochs", str(s.epochs),
           "--lr", str(s.lr), "--momentum", str(s.momentum), "--batch-per-rank", str(batch),
           "--seed", str(s.seed), "--out", str(out)]
    procs = [subprocess.Popen([*cmd, "--rank", str(r)], cwd=ROOT, env=env)
             for r in range(world)]
    for p in procs:
        if p.wait(timeout=1800):
            raise RuntimeError(f"PyTorch trainer failed: {' '.join(cmd)}")
    return finished(json.loads(out.read_text()))


def sklearn_sgd_trainer(s: Settings, train, test) -> dict:
    """SGDClassifier with its defaults (alpha 1e-4, 'optimal' rate): one pass per epoch."""
    from sklearn.linear_model import SGDClassifier

    (X, y), (Xt, yt) = train, test
    clf = SGDClassifier(loss="log_loss", random_state=s.seed)
    rng = np.random.default_rng(s.seed)
    epochs = []
    for _ in range(s.epochs):
        t0 = time.perf_counter()
        perm = rng.permutation(len(y))
        clf.partial_fit(X[perm], y[perm], classes=np.array([0, 1]))
        epochs.append({"time_s": time.perf_counter() - t0, "accuracy": clf.score(Xt, yt)})
    return finished({"epochs": epochs, "samples": len(y)})


def finished(result: dict) -> dict:
    result["final_accuracy"] = result["epochs"][-1]["accuracy"]
    return result


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def trainers(s: Settings, train: str, test: str, arrays, tmp: Path) -> dict:
    """name -> a call that trains once and returns its result."""
    out = {"mpisgd allreduce": lambda: mpisgd_trainer("allreduce", s, train, test, tmp),
           f"mpisgd allreduce, blocks of {BLOCK} rows": lambda: mpisgd_trainer(
               "allreduce", s, train, test, tmp, BLOCK),
           "mpisgd ps (1 server, 1 worker)": lambda: mpisgd_trainer("ps", s, train, test, tmp),
           "mpi4py + NumPy loop": lambda: numpy_trainer(s, train, test, tmp)}
    try:   # PyTorch is a benchmark-only reference: compared with when installed
        import torch  # noqa: F401

        out["PyTorch DDP, 1 thread/process"] = lambda: torch_trainer(s, train, test, tmp,
                                                                     s.ranks, 1)
        out["PyTorch DDP, default threads"] = lambda: torch_trainer(s, train, test, tmp,
                                                                    s.ranks, 0)
        out["PyTorch, 1 process"] = lambda: torch_trainer(s, train, test, tmp, 1, 0)
    except ImportError:
        print("PyTorch not installed: its trainers are skipped (pip install torch)")
    out["sklearn SGDClassifier"] = lambda: sklearn_sgd_trainer(s, *arrays)
    return out


def rate(r: dict) -> float:
    return r["samples"] * len(r["epochs"]) / sum(e["time_s"] for e in r["epochs"])


def seconds_to(r: dict, target: float) -> tuple[float | None, bool]:
    """Training seconds until the held-out accuracy first reaches ``target``, and whether
    that is only an upper bound (accuracy known at the end of the run alone)."""
    elapsed = 0.0
    for e in r["epochs"]:
        elapsed += e["time_s"]
        if e["accuracy"] is not None and e["accuracy"] >= target:
            return elapsed, False
    if r["epochs"][-1]["accuracy"] is None and r["final_accuracy"] >= target:
        return elapsed, True
    return None, False


def summarise(runs: dict, ref: dict, target: float) -> dict:
    rows = {}
    for name, results in runs.items():
        reached = [seconds_to(r, target) for r in results]
        times = [t for t, _ in reached if t is not None]
        accs = [r["final_accuracy"] for r in results]
        rows[name] = {"samples_per_s": stats([rate(r) for r in results]),
                      "seconds_to_target": stats(times) if len(times) == len(results) else None,
                      "upper_bound": any(b for _, b in reached),
                      "final_accuracy": stats(accs),
                      "accuracy_minus_reference_points": 100 * (statistics.median(accs)
                                                                 - ref["accuracy"])}
    return rows


def paired_ratio(runs: dict, a: str, b: str) -> dict | None:
    """Samples/s of ``a`` over ``b``, repeat by repeat (drift hits both alike)."""
    if a not in runs or b not in runs:
        return None
    return stats([rate(x) / rate(y) for x, y in zip(runs[a], runs[b])])


def mpisgd_data(runs: dict) -> dict:
    """Seconds mpisgd's runs spent reading HDF5 (the slowest rank's ``data`` time in the
    cost report) and the mean share of the ranks' wall time."""
    out = {}
    for name in ("mpisgd allreduce", "mpisgd ps (1 server, 1 worker)"):
        if name not in runs:   # --only left it out
            continue
        rs = runs[name]
        out[name] = {"read_s": stats([r["data_s"] for r in rs]),
                     "share_of_wall": stats([r["data_share_of_wall"] for r in rs]),
                     "time_split": rs[0]["time_split"]}
    return out


def markdown(result: dict) -> str:
    s, ref = result["settings"], result["reference"]
    lines = [f"## End to end: logistic regression, {s['rows']:,} x {s['features']} float32, "
             f"{s['ranks']} ranks\n",
             f"Minibatch {s['batch_per_rank']} rows per rank, reshuffled every epoch; SGD lr "
             f"{s['lr']}, momentum {s['momentum']}, constant rate, {s['epochs']} epochs, no "
             f"L2 (sklearn SGDClassifier: its defaults). Reference: {ref['trainer']} accuracy "
             f"{100 * ref['accuracy']:.2f}% (fit {ref['fit_s']:.1f} s); target "
             f"{100 * result['target_accuracy']:.2f}%. Median [min, max] over "
             f"{result['repeats']} repeat(s).\n",
             "| trainer | samples/s | s to target | final accuracy % | vs reference (points) |",
             "|---|---:|---:|---:|---:|"]
    for name, r in result["trainers"].items():
        t = r["seconds_to_target"]
        t = "not reached" if t is None else ("<= " if r["upper_bound"] else "") + cell(t, ".2f")
        lines.append(f"| {name} | {cell(r['samples_per_s'])} | {t} | "
                     f"{cell(r['final_accuracy'], '.2f', 100)} | "
                     f"{r['accuracy_minus_reference_points']:+.2f} |")
    lines.append("")
    for key, (label, goal) in RATIOS.items():
        r = result["ratios"].get(key)
        if r is not None:
            met = "met" if r["median"] >= goal else "NOT met"
            lines.append(f"- {label}: {cell(r, '.2f')} (goal >= {goal}: {met})")
    for name in ("mpisgd allreduce", "mpisgd ps (1 server, 1 worker)"):
        split = result["runs"].get(name, [{}])[0].get("step_us", {})   # --only may skip it
        if "compute" in split:
            lines.append(f"- {name}, one step on its first worker (median us, first repeat): "
                         + ", ".join(f"{k} {v:.0f}" for k, v in split.items()
                                     if k != "epoch_start_extra")
                         + f"; each epoch's first step {split['epoch_start_extra'] / 1e3:.1f}"
                         f" ms longer (its permutation and schedule of rows)")
    for name, d in result["mpisgd_data"].items():
        lines.append(f"- {name}: HDF5 reads {cell(d['read_s'], '.2f')} s, "
                     f"{100 * d['share_of_wall']['median']:.1f}% of the wall time (cost report)")
    return "\n".join(lines)


RATIOS = {"mpisgd_over_ddp_1thread": ("samples/s mpisgd allreduce / PyTorch DDP (1 thread)", 10),
          "mpisgd_over_numpy": ("samples/s mpisgd allreduce (row shuffle) / mpi4py + NumPy "
                                "loop", 1.2),
          "mpisgd_blocks_over_numpy": ("samples/s mpisgd allreduce (block shuffle) / mpi4py "
                                       "+ NumPy loop", 2.5),
          "mpisgd_blocks_over_ddp_1thread": ("samples/s mpisgd allreduce (block shuffle) / "
                                             "PyTorch DDP (1 thread)", 10),
          "mpisgd_ps_over_numpy": ("samples/s mpisgd ps-bsp / mpi4py + NumPy loop", 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200,000 rows, 2 epochs, 1 repeat")
    ap.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    ap.add_argument("--only", default="", metavar="A,B",
                    help="run only the trainers whose names contain one of these words")
    args = ap.parse_args()
    s = Settings(rows=200_000, features=100, epochs=2) if args.quick else \
        Settings(rows=1_000_000, features=100, epochs=3)
    repeats = args.repeats or (1 if args.quick else 3)
    train, test = dataset(s.rows, s.features)
    arrays = (load(train), load(test))
    ref = reference(*arrays)
    target = ref["accuracy"] - TARGET_BELOW_REFERENCE
    runs: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as d:
        calls = trainers(s, train, test, arrays, Path(d))
        if args.only:
            words = [w.strip().lower() for w in args.only.split(",")]
            calls = {k: v for k, v in calls.items() if any(w in k.lower() for w in words)}
        for _ in range(repeats):   # interleaved: drift hits every trainer alike
            for name, call in calls.items():
                runs.setdefault(name, []).append(call())
    result = {"settings": asdict(s), "repeats": repeats, "reference": ref,
              "target_accuracy": target, "trainers": summarise(runs, ref, target),
              "ratios": {"mpisgd_over_ddp_1thread": paired_ratio(
                             runs, "mpisgd allreduce", "PyTorch DDP, 1 thread/process"),
                         "mpisgd_over_numpy": paired_ratio(runs, "mpisgd allreduce",
                                                           "mpi4py + NumPy loop"),
                         "mpisgd_blocks_over_numpy": paired_ratio(
                             runs, f"mpisgd allreduce, blocks of {BLOCK} rows",
                             "mpi4py + NumPy loop"),
                         "mpisgd_blocks_over_ddp_1thread": paired_ratio(
                             runs, f"mpisgd allreduce, blocks of {BLOCK} rows",
                             "PyTorch DDP, 1 thread/process"),
                         "mpisgd_ps_over_numpy": paired_ratio(
                             runs, "mpisgd ps (1 server, 1 worker)", "mpi4py + NumPy loop")},
              "mpisgd_data": mpisgd_data(runs), "runs": runs, "train": train, "test": test}
    table = markdown(result)
    print(table)
    print(f"\nwrote {write_json('end_to_end', args.quick, result | {'table': table})}")


if __name__ == "__main__":
    main()

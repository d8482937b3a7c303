"""Sparse logistic regression: mpisgd (ps and allreduce) against Vowpal Wabbit and
scikit-learn's SGDClassifier on the same hashed CSR rows.

    python benchmarks/sparse.py [--quick] [--repeats N] [--rows N] [--bits B]

Data: ``data synth --kind sparse`` (binary labels from a logistic model over Zipf-
distributed hashed features, ``--nnz`` non-zeros per row, 2^bits features); the last
fifth of the rows is the held-out set, the rest trains. Every trainer makes one pass
(``--epochs``) over the same training rows and is scored on the same held-out rows:

* mpisgd, ps mode with 1 server and 1 worker, and allreduce mode at 2 ranks, FTRL;
* Vowpal Wabbit (the ``vowpalwabbit`` package, one process, logistic loss, -b bits), the
  rows written as ``|f id:value`` text and read from its binary cache file on the timed
  run (the cache is made by an untimed first pass, as VW users do);
* scikit-learn's SGDClassifier(loss="log_loss") on the scipy CSR matrix, one epoch.

Figures: samples per second over the training pass (mpisgd: its training time; VW: the
wall time of the cached run; scikit-learn: ``fit``), held-out log-loss; ratios of each
mpisgd mode to VW and to scikit-learn per repeat, medians over repeats. Writes
benchmarks/results/sparse.json (sparse_quick.json with --quick) and prints Markdown.
Vowpal Wabbit is skipped when its package is missing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import sparse as sp
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from benchmarks.common import cell, run_mpisgd, stats, write_json
from mpisgd.data import open_dataset, read_csr_rows, sparse_to_folder, write_csr_shard
from mpisgd.runtime.paths import cache_dir

try:
    import vowpalwabbit
except ImportError:   # benchmarks only: VW is an optional reference
    vowpalwabbit = None


def make_data(rows: int, bits: int, nnz: int, seed: int = 1) -> tuple[Path, Path]:
    """(train folder, test folder) of one generated dataset split 80/20, cached."""
    base = cache_dir() / "bench" / f"sparse-{rows}-{bits}-{nnz}-{seed}"
    train, test = base / "train", base / "test"
    if not (train / "part-0.h5").exists():
        whole = base / "whole"
        info = sparse_to_folder(whole, n_rows=rows, n_features=2**bits, nnz=nnz, seed=seed,
                                dtype="float32", n_shards=1, overwrite=True)
        indptr, indices, values, y = read_csr_rows(info, 0, rows)
        cut = rows * 4 // 5
        for folder, a, b in ((train, 0, cut), (test, cut, rows)):
            folder.mkdir(parents=True, exist_ok=True)
            ip = indptr[a:b + 1] - indptr[a]
            write_csr_shard(str(folder / "part-0.h5"), ip, indices[indptr[a]:indptr[b]],
                            values[indptr[a]:indptr[b]], y[a:b], n_features=2**bits,
                            task="binary", n_classes=2)
    return train, test


def load_csr(folder: Path):
    info = open_dataset(folder)
    indptr, indices, values, y = read_csr_rows(info, 0, info.n_rows)
    return sp.csr_matrix((values, indices, indptr), shape=(info.n_rows, info.n_features)), y


def write_vw(path: Path, X, y) -> None:
    """VW's text format, one line per row: label (-1/1) and the features as id:value."""
    with open(path, "w") as f:
        for i in range(X.shape[0]):
            a, b = X.indptr[i], X.indptr[i + 1]
            feats = " ".join(f"{j}:{v:.6g}" for j, v in zip(X.indices[a:b], X.data[a:b]))
            f.write(f"{1 if y[i] else -1} |f {feats}\n")


def run_vw(folder: Path, train_txt: Path, test_txt: Path, bits: int, epochs: int,
           n_train: int, y_test) -> dict:
    model, cache, preds = folder / "vw.model", folder / "train.cache", folder / "preds.txt"
    args = (f"--loss_function logistic -b {bits} --passes {epochs} --holdout_off "
            f"--cache_file {cache} -f {model} --quiet")
    if not cache.exists():   # untimed: VW writes its cache file on a first pass
        vowpalwabbit.Workspace(f"-d {train_txt} {args}").finish()
    t0 = time.perf_counter()
    vowpalwabbit.Workspace(f"-d {train_txt} {args}").finish()
    seconds = time.perf_counter() - t0
    vowpalwabbit.Workspace(f"-d {test_txt} -t -i {model} --link logistic -p {preds} "
                           f"--quiet").finish()
    p = np.clip(np.loadtxt(preds), 1e-7, 1 - 1e-7)
    return {"samples_per_s": n_train * epochs / seconds, "log_loss": log_loss(y_test, p),
            "train_s": seconds}


def run_sklearn(X, y, Xt, yt, epochs: int) -> dict:
    clf = SGDClassifier(loss="log_loss", max_iter=epochs, tol=None, random_state=0)
    t0 = time.perf_counter()
    clf.fit(X, y)
    seconds = time.perf_counter() - t0
    p = clf.predict_proba(Xt)[:, 1]
    return {"samples_per_s": X.shape[0] * epochs / seconds, "log_loss": log_loss(yt, p),
            "train_s": seconds}


def run_ours(mode: str, train: Path, test: Path, epochs: int, folder: Path) -> dict:
    sets = [f"data.train='{train}'", f"data.test='{test}'", f"mode='{mode}'",
            f"train.epochs={epochs}", "ps.servers=1"]
    args = ["jobs/sparse_logreg.toml"] + [w for s in sets for w in ("--set", s)]
    s = run_mpisgd(2, args, folder / mode)
    return {"samples_per_s": s["samples_per_s"], "log_loss": s["test"]["log_loss"],
            "train_s": s["train_time_s"], "bytes": s.get("sparse")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200,000 rows, 2^20 features")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--bits", type=int, default=24)
    ap.add_argument("--nnz", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=1)
    a = ap.parse_args()
    rows, bits = (200_000, 20) if a.quick else (a.rows, a.bits)
    train, test = make_data(rows, bits, a.nnz)
    X, y = load_csr(train)
    Xt, yt = load_csr(test)
    runs: dict[str, list[dict]] = {"mpisgd ps": [], "mpisgd allreduce": [], "vw": [],
                                   "sklearn": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if vowpalwabbit is not None:
            write_vw(folder / "train.txt", X, y)
            write_vw(folder / "test.txt", Xt, yt)
        for _ in range(a.repeats):
            runs["mpisgd ps"].append(run_ours("ps", train, test, a.epochs, folder))
            runs["mpisgd allreduce"].append(run_ours("allreduce", train, test, a.epochs,
                                                     folder))
            if vowpalwabbit is not None:
                runs["vw"].append(run_vw(folder, folder / "train.txt", folder / "test.txt",
                                         bits, a.epochs, X.shape[0], yt))
            runs["sklearn"].append(run_sklearn(X, y, Xt, yt, a.epochs))
    report(runs, {"rows": rows, "bits": bits, "nnz": a.nnz, "epochs": a.epochs,
                  "repeats": a.repeats}, a.quick)


def report(runs: dict, settings: dict, quick: bool) -> None:
    out = {"settings": settings, "trainers": {}, "ratios": {}}
    print(f"| trainer | samples/s | held-out log-loss |  ({settings})\n|---|---|---|")
    for name, rs in runs.items():
        if not rs:
            continue
        out["trainers"][name] = {"samples_per_s": stats([r["samples_per_s"] for r in rs]),
                                 "log_loss": stats([r["log_loss"] for r in rs]),
                                 "runs": rs}
        t = out["trainers"][name]
        print(f"| {name} | {cell(t['samples_per_s'])} | {cell(t['log_loss'], '.4f')} |")
    for ours in ("mpisgd ps", "mpisgd allreduce"):
        for ref in ("vw", "sklearn"):
            if runs[ref]:
                ratios = [o["samples_per_s"] / r["samples_per_s"]
                          for o, r in zip(runs[ours], runs[ref])]
                out["ratios"][f"{ours} / {ref}"] = stats(ratios)
                print(f"{ours} / {ref} samples/s: {cell(stats(ratios), '.2f')}")
        best = min(statistics.median(r["log_loss"] for r in runs[ref])
                   for ref in ("vw", "sklearn") if runs[ref])
        gap = statistics.median(r["log_loss"] for r in runs[ours]) / best - 1
        out["ratios"][f"{ours} log-loss vs best reference"] = gap
        print(f"{ours}: held-out log-loss {gap:+.2%} against the better reference")
    print(f"written to {write_json('sparse', quick, out)}")


if __name__ == "__main__":
    main()

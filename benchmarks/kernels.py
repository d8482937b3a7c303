"""Throughput of the loss+gradient kernels against the machine's memory-read floor and NumPy.

    python benchmarks/kernels.py [--quick] [--repeats N]

One full pass (idx = all rows) of each model through the public ``mpisgd.kernels.loss_grad``
(validation included), reported as GB/s of X read and as a share of the floor: a numba
parallel sum over a large float32 array. The copy floor beside it is a numba parallel
copy of the same array (bytes read + written, STREAM's convention). The NumPy baseline is
``X @ w`` then ``X.T @ r`` (what a linear/logistic gradient needs), and ``X @ W.T`` then
``R.T @ X`` for softmax. The MLP (hidden layers 256, 256; 10 classes) does arithmetic,
not reads: its pass over the first MLP_ROWS rows is reported as GFLOP/s beside NumPy's
matrix product of the same rows with its first layer's weights. Uses numba's default
thread count (set NUMBA_NUM_THREADS to change it). Prints Markdown tables and writes
benchmarks/results/kernels.json (kernels_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np
from numba import prange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
import mpisgd.kernels as K
from mpisgd.kernels.options import block_range, njit, pjit

N_CLASSES = {"linear": 0, "logistic": 2, "softmax": 10}
MLP_HIDDEN, MLP_CLASSES = (256, 256), 10
MLP_ROWS = 8192   # enough rows for full-width blocks; a full pass at d = 1000 would take minutes
RESULTS = Path(__file__).resolve().parent / "results" / "kernels.json"


@njit
def _sum(a):
    s = np.float32(0.0)
    for i in range(a.shape[0]):
        s += a[i]
    return s


@pjit
def _read_floor(a, nb):
    """Sum of a float32 array in nb blocks: the kernels' access pattern with no arithmetic."""
    out = np.zeros(nb)
    for k in prange(nb):
        lo, hi = block_range(a.shape[0], nb, k)
        out[k] = _sum(a[lo:hi])
    return out.sum()


@njit
def _copy(src, dst):
    for i in range(src.shape[0]):
        dst[i] = src[i]


@pjit
def _copy_floor(src, dst, nb):
    """Copy a float32 array in nb blocks: the memory traffic of a gather, no arithmetic."""
    for k in prange(nb):
        lo, hi = block_range(src.shape[0], nb, k)
        _copy(src[lo:hi], dst[lo:hi])


def timed(fn, repeats: int) -> dict:
    """Seconds per call, after warm-up calls (compile or cache load; idle cores ramp up)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": float(np.median(times)), "min": min(times), "max": max(times)}


def rates(nbytes: int, seconds: dict) -> dict:
    """GB/s (or GFLOP/s of flops) for the median, slowest and fastest repeat."""
    return {"median": nbytes / seconds["median"] / 1e9, "min": nbytes / seconds["max"] / 1e9,
            "max": nbytes / seconds["min"] / 1e9}


def problem(model, n, d, dtype, rng):
    C = N_CLASSES[model]
    y = rng.standard_normal(n, dtype=dtype) if model == "linear" else rng.integers(0, C, n)
    theta = (rng.standard_normal(K.n_params(model, d, C)) / np.sqrt(d)).astype(dtype)
    return y, theta


def mlp_flops(d: int, rows: int) -> int:
    """Floating-point operations of one MLP loss+gradient pass over ``rows`` rows: the
    forward products, the weight gradients, and the input gradients of every layer but
    the first (2 flops per multiply-add)."""
    sizes = (d, *MLP_HIDDEN, MLP_CLASSES)
    macs = [a * b for a, b in zip(sizes, sizes[1:])]
    return 2 * rows * (3 * sum(macs) - macs[0])


def bench_mlp(X, rows: int, repeats, rng) -> dict:
    """The MLP kernel over X's first ``rows`` rows, as GFLOP/s."""
    spec = K.ModelSpec("mlp", X.shape[1], MLP_CLASSES, hidden=MLP_HIDDEN)
    y = rng.integers(0, MLP_CLASSES, X.shape[0])
    theta = K.spec_init(spec, X.dtype, rng)
    grad = np.empty_like(theta)
    idx = np.arange(rows)
    seconds = timed(lambda: K.spec_loss_grad(spec, X, y, idx, theta, grad), repeats)
    widths = "-".join(map(str, spec.sizes))
    return {"case": f"loss_grad mlp {widths}", "rows": rows, "d": X.shape[1],
            "dtype": X.dtype.name, "seconds": seconds, "params": theta.size,
            "flops_per_row": mlp_flops(X.shape[1], 1),
            "gflops": rates(mlp_flops(X.shape[1], rows), seconds)}


def bench_matmul(X, rows: int, repeats, rng) -> dict:
    """NumPy's (BLAS) product of X's first rows with a (d, 256) matrix, as GFLOP/s."""
    A = X[:rows]
    W = rng.standard_normal((X.shape[1], MLP_HIDDEN[0])).astype(X.dtype)
    seconds = timed(lambda: A @ W, repeats)
    return {"case": "numpy X @ W (d x 256)", "rows": rows, "d": X.shape[1],
            "dtype": X.dtype.name, "seconds": seconds,
            "gflops": rates(2 * rows * X.shape[1] * MLP_HIDDEN[0], seconds)}


def bench_shape(n, d, dtype, repeats, rng, mlp_rows) -> tuple[list[dict], list[dict]]:
    X = rng.standard_normal((n, d), dtype=dtype)
    idx = np.arange(n)
    rows = []

    def row(case, seconds):
        rows.append({"case": case, "n": n, "d": d, "dtype": np.dtype(dtype).name,
                     "seconds": seconds, "gbps": rates(X.nbytes, seconds)})

    for model in K.MODELS:
        y, theta = problem(model, n, d, dtype, rng)
        grad = np.empty_like(theta)
        label = f"{model}" + (f" (C={N_CLASSES[model]})" if model == "softmax" else "")
        seconds = timed(lambda: K.loss_grad(model, X, y, idx, theta, grad), repeats)
        row(f"loss_grad {label}", seconds)
    mlp = [bench_mlp(X, min(n, mlp_rows), repeats, rng)]
    # NumPy last: OpenBLAS threads keep spinning for a while after a call and would steal
    # the cores from the next numba kernel; then pause so they go to sleep.
    w = X[0].copy()
    row("numpy X@w + X.T@r", timed(lambda: X.T @ (X @ w), repeats))
    W = X[: N_CLASSES["softmax"]].copy()
    row("numpy X@W.T + R.T@X (C=10)", timed(lambda: (X @ W.T).T @ X, repeats))
    mlp.append(bench_matmul(X, min(n, mlp_rows), repeats, rng))
    mlp[0]["share_of_matmul"] = mlp[0]["gflops"]["median"] / mlp[1]["gflops"]["median"]
    time.sleep(1.0)
    return rows, mlp


def mlp_markdown(rows: list[dict]) -> str:
    lines = ["| case | rows x d | dtype | ms (median) | GFLOP/s median [min, max] | "
             "share of NumPy matmul |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        g = r["gflops"]
        share = f"{r['share_of_matmul']:.0%}" if "share_of_matmul" in r else "100%"
        lines.append(f"| {r['case']} | {r['rows']:,} x {r['d']:,} | {r['dtype']} | "
                     f"{r['seconds']['median'] * 1e3:.1f} | {g['median']:.1f} "
                     f"[{g['min']:.1f}, {g['max']:.1f}] | {share} |")
    return "\n".join(lines)


def markdown(floor: dict, copy: dict, rows: list[dict]) -> str:
    lines = ["| case | n x d | dtype | ms (median) | GB/s median [min, max] | share of floor |",
             "|---|---|---|---:|---:|---:|"]
    def cells(seconds, g):
        return f"{seconds['median'] * 1e3:.1f} | {g['median']:.1f} [{g['min']:.1f}, {g['max']:.1f}]"

    lines.append(f"| read floor (numba parallel sum) | {floor['n']:,} | float32 | "
                 f"{cells(floor['seconds'], floor['gbps'])} | 100% |")
    lines.append(f"| copy floor (numba parallel copy, read + write) | {copy['n']:,} | float32 | "
                 f"{cells(copy['seconds'], copy['gbps'])} | "
                 f"{copy['gbps']['median'] / floor['gbps']['median']:.0%} |")
    for r in rows:
        lines.append(f"| {r['case']} | {r['n']:,} x {r['d']:,} | {r['dtype']} | "
                     f"{cells(r['seconds'], r['gbps'])} | {r['share_of_floor']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="arrays 10x smaller (a smoke run)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per case (>= 5)")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error(f"--repeats must be >= 5. Got {args.repeats}.")
    scale = 10 if args.quick else 1
    shapes = [(1_000_000 // scale, 100, np.float32), (1_000_000 // scale, 100, np.float64),
              (200_000 // scale, 1_000, np.float32), (200_000 // scale, 1_000, np.float64)]
    rng = np.random.default_rng(0)

    a = np.ones((1 << 28) // scale, dtype=np.float32)  # 1 GiB: far beyond any cache
    seconds = timed(lambda: _read_floor(a, 64), args.repeats)
    floor = {"n": a.size, "seconds": seconds, "gbps": rates(a.nbytes, seconds)}
    b = np.empty_like(a)
    seconds = timed(lambda: _copy_floor(a, b, 64), args.repeats)
    copy = {"n": a.size, "seconds": seconds, "gbps": rates(2 * a.nbytes, seconds)}
    a = b = None   # free the 2 GiB before the kernels run

    rows, mlp = [], []
    for n, d, dtype in shapes:
        r, m = bench_shape(n, d, dtype, args.repeats, rng, MLP_ROWS // (4 if args.quick else 1))
        rows += r
        mlp += m
    for r in rows:
        r["share_of_floor"] = r["gbps"]["median"] / floor["gbps"]["median"]

    table = markdown(floor, copy, rows) + "\n\n" + mlp_markdown(mlp)
    layer = numba.threading_layer()
    print(f"numba {numba.__version__}, {numba.get_num_threads()} threads ({layer}), "
          f"numpy {np.__version__}, {platform.machine()}, "
          f"{args.repeats} repeats{' (quick)' if args.quick else ''}\n")
    print(table)
    path = RESULTS.with_name("kernels_quick.json") if args.quick else RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)   # a quick run never replaces a full one
    path.write_text(json.dumps({
        "quick": args.quick, "repeats": args.repeats, "numba_threads": numba.get_num_threads(),
        "threading_layer": layer, "numba": numba.__version__, "numpy": np.__version__,
        "machine": platform.machine(), "floor": floor, "copy": copy, "rows": rows,
        "mlp": mlp, "table": table,
    }, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

"""Where a sparse step's time goes, against scikit-learn's per-row SGD (issue 20's 5x aim).

    python benchmarks/sparse_profile.py [--quick] [--rows N] [--repeats N]

One rank's share of `benchmarks/sparse.py`'s allreduce step at 2 ranks, on its data
(1,000,000 x 2^24 hashed features, 40 non-zeros per row, Zipf(1.1) frequencies): 512
rows per step, through the kernels the job runs (``unique_keys``, ``loss_grad_theta``,
the merge of two ranks' pairs, the lazy FTRL update), timed piece by piece in steady
state (every page of theta and of FTRL's state touched first, as after the first
epoch), against scikit-learn's ``SGDClassifier.partial_fit`` on the same rows (its second
call: its weights touched too). Medians over repeats; microseconds per row on one core.
``--quick``: `sparse.py --quick`'s data (200,000 x 2^20), 100,000 rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import SGDClassifier

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_json  # noqa: E402
from benchmarks.sparse import make_data  # noqa: E402
from mpisgd.config.schema import OptimizerConfig  # noqa: E402
from mpisgd.data import open_dataset, read_csr_rows  # noqa: E402
from mpisgd.kernels import sparse as ks  # noqa: E402
from mpisgd.kernels.merge import merge_runs  # noqa: E402
from mpisgd.optim_sparse import make_sparse_optimizer  # noqa: E402

BATCH = 512   # one of 2 ranks' rows of the job's 1024-row minibatch
PIECES = ("unique_keys", "loss_grad", "merge", "ftrl")


def profile_ours(X, y, dtype) -> dict[str, float]:
    """Seconds per row of each piece over one pass of the rows."""
    d = X.n_features
    theta = np.zeros(d + 1, dtype)
    cfg = OptimizerConfig(name="ftrl", lr=4.0, ftrl_beta=1.0, ftrl_l1=0.0, ftrl_l2=0.0)
    opt = make_sparse_optimizer(cfg, d + 1, dtype, 0)
    opt.step(theta, np.zeros(1, np.int64), np.zeros(1, dtype), 4.0)   # makes its state
    # Every page of theta and of the state (z, n) touched: steady state, not first-touch
    # faults, which on this VM cost 8-20 us a page and do not recur after an epoch.
    for buf in [theta, *opt._buffers.values()]:
        buf.fill(0)
    spent = dict.fromkeys(PIECES, 0.0)
    steps = X.n_rows // BATCH
    scale = dtype.type(1.0 / (2 * BATCH))
    for s in range(steps):
        idx = np.arange(s * BATCH, (s + 1) * BATCH)
        t0 = time.perf_counter()
        known = ks.unique_keys(X.indptr, X.indices, idx)
        t1 = time.perf_counter()
        g = ks.loss_grad_theta("logistic", X, y, idx, theta, known=known)
        t2 = time.perf_counter()
        # the other rank's pairs: the same keys (a merge of two equal runs, as many pairs)
        keys = np.concatenate([g.keys, g.keys])
        vals = np.concatenate([g.grad_keys, g.grad_keys])
        mk, mv = merge_runs(keys, vals, [g.keys.size, g.keys.size])
        t3 = time.perf_counter()
        mv *= scale
        opt.step(theta, mk, mv, 4.0)
        t4 = time.perf_counter()
        for name, dt in zip(PIECES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            spent[name] += dt
    return {k: v / (steps * BATCH) for k, v in spent.items()}


def profile_sklearn(Xs, y) -> float:
    clf = SGDClassifier(loss="log_loss", tol=None, random_state=0)
    clf.partial_fit(Xs, y, classes=[0, 1])   # touches coef_'s pages
    t0 = time.perf_counter()
    clf.partial_fit(Xs, y)
    return (time.perf_counter() - t0) / Xs.shape[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows profiled (default 200,000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.rows = min(a.rows, 100_000)
    train, _ = make_data(200_000, 20, 40) if a.quick else make_data(1_000_000, 24, 40)
    info = open_dataset(train)
    indptr, indices, values, y = read_csr_rows(info, 0, a.rows)
    X = ks.CSR(indptr, indices, values, info.n_features)
    y = y.astype(np.int64)
    Xs = sp.csr_matrix((values.astype(np.float64), indices, indptr),
                       shape=(a.rows, info.n_features))
    ours, theirs = [], []
    for _ in range(a.repeats):   # interleaved: both see the same machine
        ours.append(profile_ours(X, y, values.dtype))
        theirs.append(profile_sklearn(Xs, y))
    med = {k: float(np.median([o[k] for o in ours])) for k in PIECES}
    total = sum(med.values())
    sk = float(np.median(theirs))
    print(f"mpisgd kernels, one core, {BATCH} rows per step: {1e6 * total:.3f} us per row")
    for k in PIECES:
        print(f"  {k:12s} {1e6 * med[k]:.3f} us per row  {100 * med[k] / total:.0f}%")
    print(f"scikit-learn SGDClassifier (one core): {1e6 * sk:.3f} us per row")
    bound = 2 * sk / total
    print(f"bound on mpisgd / scikit-learn at 2 ranks from these kernels alone (perfect "
          f"scaling, free exchange): {bound:.2f}x")
    write_json("sparse_profile", a.quick, {"rows": a.rows, "batch": BATCH, "us_per_row": {
        k: 1e6 * v for k, v in med.items()}, "sklearn_us_per_row": 1e6 * sk,
        "bound_at_2_ranks": bound})
    return 0


if __name__ == "__main__":
    sys.exit(main())

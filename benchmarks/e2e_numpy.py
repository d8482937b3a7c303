"""The plain mpi4py + NumPy logistic-regression loop that end_to_end.py compares with.

Run under MPI:  mpiexec -n 2 python benchmarks/e2e_numpy.py TRAIN TEST --epochs E --lr LR
                    --momentum MU --batch-per-rank B --seed S --out RESULT.json

What anyone would write first, with mpisgd's semantics: each rank holds a contiguous
block of the training rows; every epoch all ranks draw the same permutation of all rows,
cut it into global minibatches of B * size rows, and each rank gathers its rows of the
batch (X[rows]), computes X @ w, the sigmoid, X.T @ r, and one buffer Allreduce sums
[gradient, bias gradient, row count]; every rank applies the same momentum-SGD update.
One BLAS thread per rank (set by the caller through OPENBLAS_NUM_THREADS). Held-out
accuracy is computed after every epoch, outside the clock. Rank 0 writes the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from benchmarks.common import training_args
from mpisgd.data import open_dataset, read_rows
from mpisgd.data.partition import block_range


def local_schedule(perm: np.ndarray, lo: int, hi: int, batch: int, steps: int):
    """This rank's rows of every global minibatch: local row ids and per-step offsets."""
    pos = np.flatnonzero((perm >= lo) & (perm < hi))
    offsets = np.searchsorted(pos // batch, np.arange(steps + 1))
    return perm[pos] - lo, offsets


def accuracy(comm, X: np.ndarray, y: np.ndarray, theta: np.ndarray) -> float:
    """Collective: held-out accuracy over every rank's block of the test rows."""
    right = np.array([np.count_nonzero(((X @ theta[:-1] + theta[-1]) > 0) == (y == 1)),
                      y.size], dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, right)
    return float(right[0] / right[1])


def train(comm, X, y, Xt, yt, lo: int, n_train: int, args) -> list[dict]:
    """Collective: the training loop; per epoch, its seconds and held-out accuracy."""
    d = X.shape[1]
    batch = args.batch_per_rank * comm.Get_size()
    steps = -(-n_train // batch)
    theta = np.zeros(d + 1, dtype=X.dtype)
    velocity = np.zeros_like(theta)
    buf = np.zeros(d + 2, dtype=X.dtype)   # [gradient of w, of b, rows]
    lr, mu = X.dtype.type(args.lr), X.dtype.type(args.momentum)
    epochs = []
    for epoch in range(args.epochs):
        comm.Barrier()
        t0 = time.perf_counter()
        perm = np.random.default_rng([args.seed, epoch]).permutation(n_train)
        rows, offsets = local_schedule(perm, lo, lo + X.shape[0], batch, steps)
        for s in range(steps):
            r = rows[offsets[s]:offsets[s + 1]]
            Xb = X[r]
            residual = 1.0 / (1.0 + np.exp(-(Xb @ theta[:-1] + theta[-1]))) - y[r]
            buf[:d] = Xb.T @ residual
            buf[d] = residual.sum()
            buf[d + 1] = r.size
            comm.Allreduce(MPI.IN_PLACE, buf)
            velocity *= mu
            velocity += buf[:d + 1] / buf[d + 1]
            theta -= lr * velocity
        seconds = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        epochs.append({"epoch": epoch + 1, "time_s": seconds,
                       "accuracy": accuracy(comm, Xt, yt, theta)})
    return epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train")
    ap.add_argument("test")
    training_args(ap)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    info, tinfo = open_dataset(args.train), open_dataset(args.test)
    lo, hi = block_range(info.n_rows, size, rank)
    X, y = read_rows(info, lo, hi)
    Xt, yt = read_rows(tinfo, *block_range(tinfo.n_rows, size, rank))
    y = y.astype(X.dtype)
    epochs = train(comm, X, y, Xt, yt, lo, info.n_rows, args)
    if rank == 0:
        Path(args.out).write_text(json.dumps({"epochs": epochs, "samples": info.n_rows}))


if __name__ == "__main__":
    main()

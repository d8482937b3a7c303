"""The PyTorch logistic-regression trainers that end_to_end.py compares with.

    python benchmarks/e2e_torch.py TRAIN TEST --rank R --world W [--port P] --threads T
        --epochs E --lr LR --momentum MU --batch-per-rank B --seed S --out RESULT.json

World 1 is a single-process loop; world > 1 is DistributedDataParallel (gloo, CPU), one
process per rank started by the caller. Same model as mpisgd's logistic (a weight vector
and a bias, zeros at the start), mean log-loss, torch.optim.SGD with momentum (mpisgd's
update rule). Each rank holds an equal contiguous block of the training rows and
reshuffles it every epoch, taking B rows per step (DDP averages the gradients, so the
step uses the mean over B * W rows as mpisgd does). ``--threads 0`` keeps PyTorch's
default thread count. Held-out accuracy is computed by rank 0 after every epoch, outside
the clock. Rank 0 writes the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from benchmarks.common import training_args
from mpisgd.data import open_dataset, read_rows


def load(args):
    """This rank's equal block of the training rows (the last n % W rows unused) and,
    on rank 0, the test rows; as tensors sharing NumPy's memory."""
    info = open_dataset(args.train)
    n = info.n_rows // args.world
    X, y = read_rows(info, args.rank * n, (args.rank + 1) * n)
    Xt, yt = X[:0], y[:0]
    if args.rank == 0:
        test = open_dataset(args.test)
        Xt, yt = read_rows(test, 0, test.n_rows)
    return (torch.from_numpy(X), torch.from_numpy(y.astype(X.dtype)),
            torch.from_numpy(Xt), torch.from_numpy(yt))


def accuracy(model: nn.Module, Xt: torch.Tensor, yt: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((model(Xt).squeeze(1) > 0) == (yt == 1)).float().mean())


def train(args, X, y, Xt, yt) -> list[dict]:
    model = nn.Linear(X.shape[1], 1)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    net = nn.parallel.DistributedDataParallel(model) if args.world > 1 else model
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(args.seed * 1000 + args.rank)
    n, B = X.shape[0], args.batch_per_rank
    epochs = []
    for epoch in range(args.epochs):
        barrier(args)
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        for lo in range(0, n, B):
            idx = perm[lo:lo + B]
            opt.zero_grad(set_to_none=True)
            loss_fn(net(X[idx]).squeeze(1), y[idx]).backward()
            opt.step()
        barrier(args)
        seconds = time.perf_counter() - t0
        acc = accuracy(model, Xt, yt) if args.rank == 0 else 0.0
        epochs.append({"epoch": epoch + 1, "time_s": seconds, "accuracy": acc})
    return epochs


def barrier(args) -> None:
    if args.world > 1:
        dist.barrier()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train")
    ap.add_argument("test")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world", type=int, default=1)
    ap.add_argument("--port", default="0")
    ap.add_argument("--threads", type=int, default=0, help="0: PyTorch's default")
    training_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}",
                                rank=args.rank, world_size=args.world)
    X, y, Xt, yt = load(args)
    epochs = train(args, X, y, Xt, yt)
    if args.rank == 0:
        Path(args.out).write_text(json.dumps({
            "epochs": epochs, "samples": X.shape[0] * args.world,
            "threads": torch.get_num_threads(), "torch": torch.__version__}))
    if args.world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

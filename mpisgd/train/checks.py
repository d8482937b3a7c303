"""The run's checks on its own course that need the data: the minibatch against the
training rows before the first step, the accuracy against the majority class at the
end. The divergence check runs inside the training loops (:mod:`mpisgd.report.advice`).
Each check warns through ``ctx.advice`` (summary.json's ``warnings``)."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from mpisgd.context import Context
from mpisgd.data.read import iter_selected
from mpisgd.evaluation import predict_rows
from mpisgd.report.advice import batch_message, majority_message
from mpisgd.report.metrics import classification_sums, classification_width

_BLOCK = 65536   # rows per prediction block: bounded memory for any training set


def check_batch(ctx: Context) -> None:
    """Every rank (no communication): warn when ``train.batch_size`` exceeds the training
    rows, which makes every epoch one full-batch step."""
    batch = ctx.cfg.train.batch_size
    message = batch_message(batch, ctx.n_train)
    if message:
        ctx.advice.add("batch", message, batch_size=batch, n_train=ctx.n_train)


def check_majority(ctx: Context, theta: np.ndarray, final: dict) -> None:
    """Collective over the world when there are no held-out rows (the training rows are
    scored then): warn when a classifier's accuracy is below the majority-class rate of
    the same rows. Held-out rows: their reduced metrics (``final["test"]``) suffice."""
    if ctx.spec.task == "regression":
        return
    if ctx.n_test:
        test, rows = final.get("test", {}), "test"
    else:
        test, rows = training_counts(ctx, theta), "training"
    if "accuracy" not in test:
        return
    message = majority_message(test["accuracy"], test["support"], rows)
    if message:
        ctx.advice.add("majority", message, rows=rows, accuracy=test["accuracy"],
                       majority_rate=max(test["support"]) / sum(test["support"]))


def training_counts(ctx: Context, theta: np.ndarray) -> dict:
    """Collective over the world: accuracy and rows per class (``support``) on the
    training rows, from one reduction of confusion counts. Ranks without rows
    (parameter servers) add zeros."""
    counts = np.zeros(classification_width(ctx.n_classes, auc=False))
    for X, y, pick in _training_blocks(ctx):
        proba = predict_rows(ctx, X, pick, theta)
        counts += classification_sums(proba, y[pick], ctx.n_classes)
    ctx.topo.world.Allreduce(MPI.IN_PLACE, counts)
    c = ctx.n_classes
    confusion = counts[:c * c].reshape(c, c)
    n = confusion.sum()
    if not n:
        return {}
    return {"accuracy": float(np.trace(confusion) / n),
            "support": confusion.sum(1).astype(np.int64).tolist()}


def _training_blocks(ctx: Context):
    """This rank's training rows as (X, y, pick) blocks: from memory, or streamed from
    the files (storage placement; standardised like every row the run reads)."""
    if ctx.X is not None:
        for start in range(0, ctx.train_rows.size, _BLOCK):
            yield ctx.X, ctx.y, ctx.train_rows[start:start + _BLOCK]
        return
    for X, y, pick in iter_selected(ctx.info, ctx.row0, ctx.train_rows):
        if ctx.scaler is not None:
            ctx.scaler.transform(X, out=X)
        yield X, y, pick

"""Evaluation of a trained parameter vector: test metrics and the training objective.

Collective over the world: every rank scores its own rows and the sums are reduced,
so no data is gathered. Ranks without rows (parameter servers) contribute zeros.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from mpisgd import kernels
from mpisgd.context import Context
from mpisgd.data.read import iter_selected
from mpisgd.report.metrics import (
    classification_sums,
    classification_width,
    finish_classification,
    finish_regression,
    regression_sums,
)

_EVAL_BLOCK = 65536  # rows per prediction block: bounded memory for any test size


def evaluate(ctx: Context, theta: np.ndarray) -> dict:
    """Collective over the world: test-set metrics from reduced sums."""
    t0 = time.perf_counter()
    rows = ctx.test_rows
    task_regression = ctx.spec.task == "regression"
    width = 5 if task_regression else classification_width(ctx.n_classes)
    sums = np.zeros(width, dtype=np.float64)
    for start in range(0, rows.size, _EVAL_BLOCK):
        block = rows[start:start + _EVAL_BLOCK]
        pred = predict_rows(ctx, ctx.test_X, block, theta)
        yb = ctx.test_y[block]
        if task_regression:
            sums += regression_sums(pred, yb)
        else:
            sums += classification_sums(pred, yb, ctx.n_classes, auc=True)
    ctx.topo.world.Allreduce(MPI.IN_PLACE, sums)
    ctx.timers["eval"] += time.perf_counter() - t0
    if task_regression:
        return finish_regression(sums)
    return finish_classification(sums, ctx.n_classes)


def predict_rows(ctx: Context, X, rows: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Predictions for rows ``rows`` of ``X`` (dense rows, or a sparse run's CSR); local."""
    if ctx.sparse:
        return kernels.sparse.predict(ctx.model, X, theta, rows)
    return kernels.spec_predict(ctx.spec, np.ascontiguousarray(X[rows]), theta)


def _sparse_loss(ctx: Context, theta: np.ndarray) -> float:
    """The loss summed over this rank's training rows of a sparse run; local."""
    rows = ctx.train_rows
    return sum(kernels.sparse.loss_grad_theta(ctx.model, ctx.X, ctx.y,
                                              rows[a:a + _EVAL_BLOCK], theta).loss
               for a in range(0, rows.size, _EVAL_BLOCK))


def objective(ctx: Context, theta: np.ndarray) -> float:
    """Collective: the full training objective (mean loss + L2 + L1 terms) at ``theta``."""
    grad = np.empty_like(theta)
    if ctx.sparse:
        total = np.array([_sparse_loss(ctx, theta)], dtype=np.float64)   # 0 rows: int 0
    elif ctx.X is not None:
        total = np.array([kernels.spec_loss_grad(ctx.spec, ctx.X, ctx.y, ctx.train_rows, theta,
                                                  grad)])
    else:   # storage placement: stream this rank's block, training rows only
        total = np.zeros(1)
        for X, y, pick in iter_selected(ctx.info, ctx.row0, ctx.train_rows):
            if ctx.scaler is not None:   # raw rows from the files, as training saw them
                ctx.scaler.transform(X, out=X)
            total[0] += kernels.spec_loss_grad(ctx.spec, X, y, pick, theta, grad)
    ctx.topo.world.Allreduce(MPI.IN_PLACE, total)
    w = theta[ctx.l2_mask].astype(np.float64)
    m = ctx.cfg.model
    return float(total[0] / ctx.n_train + 0.5 * m.l2 * float(w @ w) + m.l1 * np.abs(w).sum())


def truth_distance(ctx: Context, theta: np.ndarray) -> dict:
    """Relative distance of learned weights from the generator's (synthetic data only)."""
    if ctx.info.true_w is None or ctx.model != "linear":
        return {}
    w, b = kernels.weights(ctx.model, theta, ctx.n_features, ctx.n_classes)
    if ctx.scaler is not None:   # w.(x - m)/s + b = (w/s).x + (b - (w/s).m): raw units
        w = w.astype(np.float64) / ctx.scaler.scale
        b = b - w @ ctx.scaler.mean
    tw = np.asarray(ctx.info.true_w, dtype=np.float64)
    out = {"weight_rel_error": float(np.linalg.norm(w - tw) / max(np.linalg.norm(tw), 1e-300))}
    if ctx.info.true_b is not None:
        out["bias_abs_error"] = float(np.abs(np.asarray(b, dtype=np.float64)
                                             - np.asarray(ctx.info.true_b)).max())
    return out

"""Evaluation metrics computed from sums that ranks reduce, never from gathered data.

Each rank turns its predictions into a small vector of sums (squared errors, a
confusion matrix, log-loss); the vectors are summed across ranks with one Allreduce
and ``finish_*`` turns the totals into metrics identical on every rank.
"""

from __future__ import annotations

import math

import numpy as np

_EPS = 1e-15


def regression_sums(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[n, sum e^2, sum |e|, sum y, sum y^2] in float64."""
    e = pred.astype(np.float64) - y
    y64 = y.astype(np.float64)
    return np.array([y.shape[0], e @ e, np.abs(e).sum(), y64.sum(), y64 @ y64])


def finish_regression(s: np.ndarray) -> dict[str, float]:
    n, sse, sae, sy, syy = (float(v) for v in s)
    if n == 0:
        return {"n": 0}
    sst = syy - sy * sy / n
    mse = sse / n
    return {"n": int(n), "mse": mse, "rmse": math.sqrt(mse), "mae": sae / n,
            "r2": 1.0 - sse / sst if sst > 0 else float("nan")}


def classification_sums(proba: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """[confusion matrix (true x predicted) flattened..., log-loss sum] in float64.

    ``proba`` is P(y=1) of shape (n,) for binary tasks, (n, C) class probabilities
    otherwise.
    """
    if proba.ndim == 1:
        pred = (proba >= 0.5).astype(np.int64)
        p_true = np.where(y == 1, proba, 1.0 - proba)
    else:
        pred = np.argmax(proba, axis=1)
        p_true = proba[np.arange(y.shape[0]), y]
    conf = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes)
    logloss = -np.log(np.clip(p_true.astype(np.float64), _EPS, 1.0)).sum()
    return np.concatenate([conf.astype(np.float64), [logloss]])


def finish_classification(s: np.ndarray, n_classes: int) -> dict[str, float]:
    conf = s[:-1].reshape(n_classes, n_classes)
    n = conf.sum()
    if n == 0:
        return {"n": 0}
    tp = np.diag(conf)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(conf.sum(0) > 0, tp / conf.sum(0), 0.0)
        recall = np.where(conf.sum(1) > 0, tp / conf.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    out = {"n": int(n), "accuracy": float(tp.sum() / n), "log_loss": float(s[-1] / n)}
    if n_classes == 2:  # the positive class is label 1, as in scikit-learn
        out.update(precision=float(precision[1]), recall=float(recall[1]), f1=float(f1[1]))
    else:
        out.update(precision=float(precision.mean()), recall=float(recall.mean()),
                   f1=float(f1.mean()))
    out["confusion"] = conf.astype(np.int64).tolist()
    return out

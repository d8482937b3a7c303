"""Evaluation metrics computed from sums that ranks reduce, never from gathered data.

Each rank turns its predictions into a vector of sums (squared errors, a
confusion matrix, log-loss, score histograms for ROC AUC); the vectors are summed
across ranks with one Allreduce and ``finish_*`` turns the totals into metrics
identical on every rank.
"""

from __future__ import annotations

import math

import numpy as np

from mpisgd.runtime.numbers import num

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


# ROC AUC of binary tasks from two score histograms (negatives, positives) that ranks
# sum. Scores are binned by their logit, not by the probability itself: a confident
# model puts most probabilities within 1e-3 of 0 or 1, where equal-width bins on [0, 1]
# would tie (and so blur) many positive/negative pairs; on the logit scale those
# scores spread over many bins. 2**14 bins over logits [-20, 20]: bins 0.0024 wide,
# 2 x 128 KiB of sums. Probabilities beyond sigmoid(+-20) (2e-9 from 0 or 1) share the
# end bins.
AUC_BINS = 1 << 14
AUC_LOGIT_RANGE = 20.0


def classification_width(n_classes: int, auc: bool = True) -> int:
    """Length of the :func:`classification_sums` vector: C*C confusion counts, the
    log-loss sum, and for binary tasks with ``auc`` two histograms of AUC_BINS bins."""
    return n_classes * n_classes + 1 + (2 * AUC_BINS if auc and n_classes == 2 else 0)


def score_histograms(score: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[negatives' histogram (AUC_BINS), positives' histogram (AUC_BINS)] in float64.

    ``score`` is P(y=1) per row; it is binned by its logit, clipped to +-AUC_LOGIT_RANGE
    (NaN counts as 0.5, so that a diverged model cannot index outside the bins).
    """
    p = score.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log(p) - np.log1p(-p)
    z = np.nan_to_num(z, nan=0.0, posinf=AUC_LOGIT_RANGE, neginf=-AUC_LOGIT_RANGE)
    scaled = (z + AUC_LOGIT_RANGE) * (AUC_BINS / (2.0 * AUC_LOGIT_RANGE))
    b = np.clip(scaled, 0, AUC_BINS - 1).astype(np.int64)
    return np.bincount(b + AUC_BINS * (y == 1), minlength=2 * AUC_BINS).astype(np.float64)


def auc_from_histograms(neg: np.ndarray, pos: np.ndarray) -> float:
    """ROC AUC from binned scores: a pair (positive, negative) in different bins counts
    1 if the positive's bin is higher, 0 if lower; a pair in the same bin counts 1/2,
    as a tie does in the exact AUC.

    Approximation error: only pairs sharing a bin can be scored wrongly, and then by at
    most 1/2, so |AUC_binned - AUC_exact| <= 1/2 * sum_b pos_b * neg_b / (P * N)
    (:func:`auc_error_bound`). For scores with a density the shared-bin share is about
    the bin width (0.0024 in logit) times the overlap of the two score densities: about
    1e-4 or less for typical models, and 0 for exact ties, which the exact AUC also
    counts as 1/2. NaN if either class has no row.
    """
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def auc_error_bound(neg: np.ndarray, pos: np.ndarray) -> float:
    """The bound on |binned AUC - exact AUC| stated in :func:`auc_from_histograms`."""
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float(0.5 * (pos * neg).sum() / (n_pos * n_neg))


def classification_sums(proba: np.ndarray, y: np.ndarray, n_classes: int, *,
                        auc: bool = False) -> np.ndarray:
    """[confusion matrix (true x predicted) flattened..., log-loss sum, AUC histograms]
    in float64, of length ``classification_width(n_classes, auc)``.

    ``proba`` is P(y=1) of shape (n,) for binary tasks, (n, C) class probabilities
    otherwise. ``auc`` adds the score histograms of :func:`score_histograms` when
    n_classes == 2 (the score is column 1 of a (n, 2) ``proba``); without it the
    layout is the original C*C + 1.
    """
    if proba.ndim == 1:
        pred = (proba >= 0.5).astype(np.int64)
        p_true = np.where(y == 1, proba, 1.0 - proba)
    else:
        pred = np.argmax(proba, axis=1)
        p_true = proba[np.arange(y.shape[0]), y]
    conf = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes)
    logloss = -np.log(np.clip(p_true.astype(np.float64), _EPS, 1.0)).sum()
    parts = [conf.astype(np.float64), [logloss]]
    if auc and n_classes == 2:
        parts.append(score_histograms(proba if proba.ndim == 1 else proba[:, 1], y))
    return np.concatenate(parts)


def finish_classification(s: np.ndarray, n_classes: int) -> dict:
    """Metrics from reduced :func:`classification_sums` (either layout).

    accuracy, log_loss; precision/recall/f1 of class 1 (binary, as scikit-learn) or
    their macro averages (multiclass); per-class lists ``precision_per_class``,
    ``recall_per_class``, ``f1_per_class``, ``support`` (rows per true class; a class
    never predicted or never present scores 0, as scikit-learn's zero_division=0);
    ``confusion`` (true x predicted); ``auc`` when the histograms are present.
    """
    cc = n_classes * n_classes
    if s.shape[0] not in (classification_width(n_classes, False),
                          classification_width(n_classes, True)):
        raise ValueError(f"finish_classification: expected {cc + 1} or "
                         f"{classification_width(n_classes, True)} sums for {n_classes} "
                         f"classes; got {s.shape[0]}.")
    conf = s[:cc].reshape(n_classes, n_classes)
    n = conf.sum()
    if n == 0:
        return {"n": 0}
    tp = np.diag(conf)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(conf.sum(0) > 0, tp / conf.sum(0), 0.0)
        recall = np.where(conf.sum(1) > 0, tp / conf.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    out = {"n": int(n), "accuracy": float(tp.sum() / n), "log_loss": float(s[cc] / n)}
    if n_classes == 2:  # the positive class is label 1, as in scikit-learn
        out.update(precision=float(precision[1]), recall=float(recall[1]), f1=float(f1[1]))
    else:
        out.update(precision=float(precision.mean()), recall=float(recall.mean()),
                   f1=float(f1.mean()))
    if s.shape[0] > cc + 1:
        neg, pos = s[cc + 1:cc + 1 + AUC_BINS], s[cc + 1 + AUC_BINS:]
        out["auc"] = auc_from_histograms(neg, pos)
    out.update(precision_per_class=precision.tolist(), recall_per_class=recall.tolist(),
               f1_per_class=f1.tolist(), support=conf.sum(1).astype(np.int64).tolist())
    out["confusion"] = conf.astype(np.int64).tolist()
    return out


_SHOWN = ("mse", "rmse", "mae", "r2", "accuracy", "precision", "recall", "f1", "auc",
          "log_loss")


def format_metrics(metrics: dict) -> str:
    """The scalar metrics as one line, e.g. ``accuracy 0.97, auc 0.99``."""
    return ", ".join(f"{k} {num(metrics[k])}" for k in _SHOWN if k in metrics)

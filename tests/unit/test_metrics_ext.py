"""ROC AUC from score histograms, per-class metrics and k-fold assignment: pure logic,
checked against scikit-learn and NumPy references without MPI."""

import numpy as np
import pytest
from sklearn import metrics as skm

from mpisgd.data.partition import block_range, fold_of
from mpisgd.report.metrics import (
    AUC_BINS,
    auc_error_bound,
    classification_sums,
    classification_width,
    finish_classification,
    score_histograms,
)


def _scores(kind: str, rng, n: int = 20000):
    y = rng.integers(0, 2, size=n)
    if kind == "uniform":                 # no signal at all
        s = rng.uniform(size=n)
    elif kind == "confident":             # most probabilities within 1e-4 of 0 or 1
        s = 1 / (1 + np.exp(-(3 * rng.normal(size=n) + 9 * (2 * y - 1))))
    elif kind == "ties":                  # many exactly equal scores
        s = np.round(rng.uniform(size=n) * 0.5 + 0.3 * y, 2)
    elif kind == "float32":
        s = (1 / (1 + np.exp(-(2 * rng.normal(size=n) + 2 * y - 1)))).astype(np.float32)
    else:                                 # imbalanced: 2 % positives
        y = (rng.uniform(size=n) < 0.02).astype(np.int64)
        s = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * y)))
    return s, y.astype(np.int64)


@pytest.mark.parametrize("kind", ["uniform", "confident", "ties", "float32", "imbalanced"])
def test_auc_matches_sklearn_from_sums_split_across_ranks(kind):
    s, y = _scores(kind, np.random.default_rng(7))
    sums = sum(classification_sums(s[r::3], y[r::3], 2, auc=True) for r in range(3))
    assert sums.shape == (classification_width(2),)
    m = finish_classification(sums, 2)
    exact = skm.roc_auc_score(y, s)
    assert abs(m["auc"] - exact) <= 1e-3
    hist = sums[5:]
    assert abs(m["auc"] - exact) <= auc_error_bound(hist[:AUC_BINS], hist[AUC_BINS:]) + 1e-12


def test_auc_from_two_column_probabilities_and_degenerate_cases():
    s, y = _scores("float32", np.random.default_rng(1), 500)
    two = np.column_stack([1 - s, s])
    a = finish_classification(classification_sums(s, y, 2, auc=True), 2)["auc"]
    b = finish_classification(classification_sums(two, y, 2, auc=True), 2)["auc"]
    assert a == pytest.approx(b, abs=1e-6)
    only_neg = classification_sums(s, np.zeros_like(y), 2, auc=True)
    assert np.isnan(finish_classification(only_neg, 2)["auc"])
    # NaN, 0 and 1 land in bins instead of breaking the histogram.
    h = score_histograms(np.array([np.nan, 0.0, 1.0, 0.5]), np.array([0, 0, 1, 1]))
    assert h.sum() == 4 and h[0] == 1 and h[-1] == 1


def test_default_layout_is_unchanged_and_both_layouts_finish():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    s = rng.uniform(size=300)
    old = classification_sums(s, y, 2)
    assert old.shape == (2 * 2 + 1,) == (classification_width(2, auc=False),)
    new = classification_sums(s, y, 2, auc=True)
    a, b = finish_classification(old, 2), finish_classification(new, 2)
    assert "auc" not in a and "auc" in b
    assert {k: v for k, v in b.items() if k != "auc"} == a
    assert classification_width(5) == 26  # multiclass: no histograms
    with pytest.raises(ValueError, match="sums"):
        finish_classification(np.zeros(7), 2)


@pytest.mark.parametrize("n_classes", [2, 5])
def test_per_class_precision_recall_f1_match_sklearn(n_classes):
    rng = np.random.default_rng(3)
    y = rng.integers(0, n_classes, size=700)
    if n_classes == 2:
        proba = rng.uniform(size=700)
        pred = (proba >= 0.5).astype(int)
    else:
        proba = rng.dirichlet(np.ones(n_classes), size=700)
        proba[y == 4] = np.eye(n_classes)[0]   # class 4 is never predicted: zero_division
        pred = proba.argmax(1)
    m = finish_classification(sum(classification_sums(proba[r::4], y[r::4], n_classes,
                                                       auc=True) for r in range(4)), n_classes)
    p, r, f, support = skm.precision_recall_fscore_support(
        y, pred, labels=range(n_classes), average=None, zero_division=0)
    np.testing.assert_allclose(m["precision_per_class"], p, rtol=1e-12)
    np.testing.assert_allclose(m["recall_per_class"], r, rtol=1e-12)
    np.testing.assert_allclose(m["f1_per_class"], f, rtol=1e-12)
    assert m["support"] == support.tolist()
    assert m["confusion"] == skm.confusion_matrix(y, pred, labels=range(n_classes)).tolist()


# ----------------------------------------------------------------------------- k-fold

def _per_rank(n, size, folds, seed, y=None):
    """fold_of as the ranks of a world of ``size`` compute it, concatenated."""
    parts = []
    for r in range(size):
        lo, hi = block_range(n, size, r)
        if y is None:
            parts.append(fold_of(lo, hi, folds, seed))
        else:
            before = np.bincount(y[:lo], minlength=int(y.max()) + 1)
            parts.append(fold_of(lo, hi, folds, seed, y[lo:hi], before))
    return np.concatenate(parts)


@pytest.mark.parametrize("n, folds", [(1003, 3), (10, 4), (5000, 10), (7, 7)])
def test_folds_cover_rows_once_balanced_and_independent_of_world_size(n, folds):
    whole = fold_of(0, n, folds, seed=11)
    for size in (2, 3, 4, 8):
        np.testing.assert_array_equal(_per_rank(n, size, folds, 11), whole)
    assert whole.shape == (n,) and whole.min() >= 0 and whole.max() < folds
    sizes = np.bincount(whole, minlength=folds)   # each row in exactly one fold
    assert sizes.sum() == n and sizes.max() - sizes.min() <= 1
    assert not np.array_equal(whole, fold_of(0, n, folds, seed=12)) or n <= 1
    np.testing.assert_array_equal(fold_of(0, n, folds, 11), whole)   # seeded: repeatable


@pytest.mark.parametrize("n_classes, shuffled", [(2, True), (3, True), (10, False)])
def test_stratified_folds_hold_class_proportions(n_classes, shuffled):
    rng = np.random.default_rng(4)
    n, folds = 2000, 5
    p = rng.dirichlet(np.ones(n_classes))
    y = rng.choice(n_classes, size=n, p=p)
    if not shuffled:
        y = np.sort(y)   # sorted by label: the worst case for a per-row hash
    whole = _per_rank(n, 1, folds, 3, y)
    for size in (2, 3, 4):
        np.testing.assert_array_equal(_per_rank(n, size, folds, 3, y), whole)
    counts = np.array([np.bincount(y[whole == k], minlength=n_classes) for k in range(folds)])
    # every fold holds floor or ceil of n_c / folds rows of every class c
    assert (counts.max(0) - counts.min(0) <= 1).all()
    share = counts / counts.sum(1, keepdims=True)
    assert np.abs(share - np.bincount(y, minlength=n_classes) / n).max() < 0.01


def test_fold_of_rejects_bad_arguments():
    with pytest.raises(ValueError, match="folds"):
        fold_of(0, 10, 1, 0)
    with pytest.raises(ValueError, match="labels"):
        fold_of(0, 3, 2, 0, np.array([0, 1, 2]), np.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        fold_of(0, 3, 2, 0, np.array([0, 1]), np.zeros(2))
    assert fold_of(5, 5, 3, 0).shape == (0,)

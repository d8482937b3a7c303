"""Metrics from reduced sums agree with scikit-learn's on the gathered data."""

import numpy as np
import pytest
from sklearn import metrics as skm

from mpisgd.report.metrics import (
    classification_sums,
    finish_classification,
    finish_regression,
    regression_sums,
)


def test_regression_sums_split_across_ranks():
    rng = np.random.default_rng(0)
    y, pred = rng.normal(size=1000), rng.normal(size=1000)
    sums = sum(regression_sums(pred[i::3], y[i::3]) for i in range(3))
    m = finish_regression(sums)
    assert m["mse"] == pytest.approx(skm.mean_squared_error(y, pred), rel=1e-12)
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-12)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-12)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_classification_sums_split_across_ranks(n_classes):
    rng = np.random.default_rng(1)
    y = rng.integers(0, n_classes, size=500)
    if n_classes == 2:
        proba = rng.uniform(size=500)
        pred = (proba >= 0.5).astype(int)
        full = np.column_stack([1 - proba, proba])
        avg = "binary"
    else:
        proba = rng.dirichlet(np.ones(n_classes), size=500)
        pred, full, avg = proba.argmax(1), proba, "macro"
    sums = sum(classification_sums(proba[i::4], y[i::4], n_classes) for i in range(4))
    m = finish_classification(sums, n_classes)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, average=avg))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, average=avg))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average=avg))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, full, labels=range(n_classes)))
    assert np.array_equal(m["confusion"], skm.confusion_matrix(y, pred, labels=range(n_classes)))

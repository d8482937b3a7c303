"""``cv``, ``eval`` and ``predict`` against scikit-learn on its bundled data sets: k-fold
accuracy against ``cross_val_score`` on the same folds, every ``eval`` metric against
``sklearn.metrics`` on the same predictions at 1 and 4 ranks, and ``predict`` at 4 ranks
against 1 rank, row for row."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import PredefinedSplit, cross_val_score, train_test_split
from sklearn.preprocessing import StandardScaler

from mpisgd.data import write_shard
from mpisgd.data.partition import fold_of
from mpisgd.report.metrics import AUC_BINS, auc_error_bound, score_histograms

from .datasets import bundled_job, bundled_split

FOLDS = 5


def test_cv_accuracy_matches_sklearn_on_the_same_folds(launch, tmp_path):
    """5-fold cv of logistic regression at 2 ranks against scikit-learn's
    LogisticRegression (C = 1) scored on mpisgd's own fold assignment."""
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)   # whole-data scaling: the same for both sides
    y = y.astype(np.int64)
    data = tmp_path / "bc.h5"
    write_shard(str(data), X, y, "binary", 2)
    n = len(y)
    # sklearn minimises C * sum(log-loss) + |w|^2 / 2; mpisgd mean(log-loss) + l2 |w|^2 / 2;
    # the same optimum for l2 = 1 / (C * n_train).
    l2 = 1.0 / (n - n // FOLDS)
    out = tmp_path / "cv"
    launch(2, ["cv", "jobs/logreg.toml", "--folds", str(FOLDS), "--set", f"data.train='{data}'",
               "--set", f"model.l2={l2}", "--set", "train.epochs=30",
               "--set", "train.batch_size=32", "--set", "optimizer.lr=0.05",
               "--out", str(out)], timeout=180, check=True)
    cv = json.loads((out / "cv.json").read_text())

    # The folds (train.seed = 0, stratified; one shard, so rows are in file order).
    folds = fold_of(0, n, FOLDS, 0, y, np.zeros(2, dtype=np.int64))
    assert folds.shape == (n,) and set(np.unique(folds)) == set(range(FOLDS))
    sizes = np.bincount(folds, minlength=FOLDS)
    assert sizes.sum() == n and sizes.max() - sizes.min() <= 2   # <= 1 row per class
    split = PredefinedSplit(test_fold=folds)
    tests = [te for _, te in split.split()]
    assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(n))   # a partition
    for k, ((tr, te), f) in enumerate(zip(split.split(), cv["per_fold"])):
        assert f["fold"] == k and f["n_test"] == len(te) == sizes[k]
        assert f["n_train"] == len(tr) == n - len(te)
        for c in (0, 1):   # stratified exactly: floor or ceil of n_c / K per class
            assert abs(int((y[te] == c).sum()) - (y == c).sum() / FOLDS) < 1

    ours = cv["mean"]["accuracy"]
    theirs = cross_val_score(LogisticRegression(max_iter=5000), X, y, cv=split).mean()
    assert abs(ours - theirs) <= 0.02, (ours, theirs, [f["test"] for f in cv["per_fold"]])


# ---------------------------------------------------------------------------------
# A model per task, trained at 2 ranks, and its 1-rank predictions.

def _regression_split(folder):
    X, y = load_diabetes(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0)
    scaler = StandardScaler().fit(Xtr)
    mu, sd = ytr.mean(), ytr.std()
    folder.mkdir(parents=True, exist_ok=True)
    write_shard(str(folder / "train.h5"), scaler.transform(Xtr), (ytr - mu) / sd,
                "regression", 0)
    write_shard(str(folder / "test.h5"), scaler.transform(Xte), (yte - mu) / sd,
                "regression", 0)
    return {"train": str(folder / "train.h5"), "test": str(folder / "test.h5"),
            "yte": (yte - mu) / sd, "n_classes": 0}


TASKS = {   # task: (data, job, overrides)
    "binary": ("breast_cancer", "jobs/logreg.toml",
               ["model.l2=0.002", "train.epochs=10", "train.batch_size=32",
                "optimizer.lr=0.05"]),
    "multiclass": ("digits", "jobs/softmax.toml",
                   ["model.l2=0.001", "train.epochs=6", "train.batch_size=64",
                    "optimizer.lr=0.05"]),
    "regression": ("diabetes", "jobs/linreg.toml",
                   ["model.l2=0.001", "train.epochs=10", "train.batch_size=32",
                    "optimizer.lr=0.02"]),
}


def _predictions(path) -> tuple[np.ndarray, np.ndarray | None, dict]:
    with h5py.File(path, "r") as f:
        proba = f["proba"][...] if "proba" in f else None
        return f["pred"][...], proba, dict(f.attrs)


@pytest.fixture(scope="module", params=list(TASKS))
def model(request, launch, tmp_path_factory):
    """A model of one task trained at 2 ranks, with its predictions on the test data
    written by `predict` at 1 rank."""
    task = request.param
    name, job, overrides = TASKS[task]
    tmp = tmp_path_factory.mktemp(task)
    d = (_regression_split(tmp / "data") if name == "diabetes"
         else bundled_split(name, tmp / "data"))
    launch(2, bundled_job(d, job, *overrides) + ["--out", str(tmp / "run")], timeout=120,
           check=True)
    d.update(task=task, model=str(tmp / "run" / "model.h5"), tmp=tmp)
    launch(1, ["predict", d["model"], "--data", d["test"], "--out", str(tmp / "pred1.h5")],
           timeout=90, check=True)
    d["pred"], d["proba"], d["attrs"] = _predictions(tmp / "pred1.h5")
    return d


def _sklearn_metrics(d) -> dict:
    """Every metric eval reports, computed by scikit-learn from predict's output."""
    y, pred, proba = d["yte"], d["pred"], d["proba"]
    if d["task"] == "regression":
        mse = skm.mean_squared_error(y, pred)
        return {"n": len(y), "mse": mse, "rmse": math.sqrt(mse),
                "mae": skm.mean_absolute_error(y, pred), "r2": skm.r2_score(y, pred)}
    labels = list(range(d["n_classes"]))
    p, r, f, support = skm.precision_recall_fscore_support(y, pred, labels=labels,
                                                           zero_division=0)
    average = "binary" if d["task"] == "binary" else "macro"
    want = {"n": len(y), "accuracy": skm.accuracy_score(y, pred),
            "precision": skm.precision_score(y, pred, average=average, zero_division=0),
            "recall": skm.recall_score(y, pred, average=average, zero_division=0),
            "f1": skm.f1_score(y, pred, average=average, zero_division=0),
            "log_loss": skm.log_loss(y, proba, labels=labels),
            "precision_per_class": p.tolist(), "recall_per_class": r.tolist(),
            "f1_per_class": f.tolist(), "support": support.tolist(),
            "confusion": skm.confusion_matrix(y, pred, labels=labels).tolist()}
    return want


@pytest.mark.parametrize("n", [1, 4])
def test_eval_metrics_equal_sklearn_on_the_same_predictions(launch, model, tmp_path, n):
    out = tmp_path / "metrics.json"
    launch(n, ["eval", model["model"], "--data", model["test"], "--out", str(out)],
           timeout=90, check=True)
    got = json.loads(out.read_text())["metrics"]
    want = _sklearn_metrics(model)
    assert set(got) - {"auc"} == set(want)   # nothing unchecked
    for key, value in want.items():
        if key in ("n", "support", "confusion"):   # counts: exactly
            assert got[key] == value, key
        else:                                       # ratios: to 1e-9
            np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-12, err_msg=key)
    if model["task"] == "binary":   # AUC from histograms: within its documented bound
        y, score = model["yte"], model["proba"]
        h = score_histograms(score, y)
        bound = auc_error_bound(h[:AUC_BINS], h[AUC_BINS:])
        assert abs(got["auc"] - skm.roc_auc_score(y, score)) <= bound + 1e-12
    if model["task"] == "multiclass":   # the macro averages are not degenerate
        assert got["accuracy"] > 0.9


def test_predict_at_4_ranks_equals_1_rank_row_for_row(launch, model):
    out = model["tmp"] / "pred4.h5"
    launch(4, ["predict", model["model"], "--data", model["test"], "--out", str(out)],
           timeout=90, check=True)
    pred, proba, attrs = _predictions(out)
    n = len(model["yte"])
    assert attrs == model["attrs"] and attrs["n_rows"] == n
    if model["task"] == "regression":
        assert proba is None and pred.dtype == np.float64
        np.testing.assert_allclose(pred, model["pred"], rtol=0, atol=1e-12)
    else:
        assert pred.dtype == np.int64 and np.array_equal(pred, model["pred"])   # bitwise
        assert proba.shape == ((n,) if model["task"] == "binary" else (n, model["n_classes"]))
        np.testing.assert_allclose(proba, model["proba"], rtol=0, atol=1e-12)

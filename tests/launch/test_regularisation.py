"""The exact oracle, ridge and lasso against scikit-learn, and early stopping."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Lasso, Ridge
from sklearn.preprocessing import StandardScaler

from mpisgd.data import open_dataset, read_rows, write_shard
from mpisgd.data.partition import holdout_mask

from .test_train import summary_of


def _diabetes(tmp_path):
    X, y = load_diabetes(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    path = tmp_path / "diabetes.h5"
    write_shard(str(path), X, y.astype(np.float64), "regression", 0)
    return str(path), X, y


@pytest.mark.parametrize("n, l2", [(1, 0.0), (4, 0.0), (4, 0.05)])
def test_oracle_equals_numpy_closed_form(launch, tmp_path, n, l2):
    out = tmp_path / "solve"
    launch(n, ["solve", "--set", "data.synth.rows=5000", "--set", "data.synth.features=12",
               "--set", f"model.l2={l2}", "--out", str(out)], timeout=120, check=True)
    with h5py.File(out / "oracle.h5", "r") as f:
        theta = f["theta"][...]
        path = f.attrs["train_data"]
    info = open_dataset(path)
    X, y = read_rows(info, 0, info.n_rows)
    keep = ~holdout_mask(0, info.n_rows, 0.2, seed=0)
    A = np.column_stack([X[keep], np.ones(keep.sum())])
    if l2:
        D = np.eye(A.shape[1])
        D[-1, -1] = 0.0
        ref = np.linalg.solve(A.T @ A + keep.sum() * l2 * D, A.T @ y[keep])
    else:
        ref, *_ = np.linalg.lstsq(A, y[keep], rcond=None)
    np.testing.assert_allclose(theta, ref, rtol=1e-8, atol=1e-10)


def _objective(X, y, w, b, l2=0.0, l1=0.0):
    r = X @ w + b - y
    return 0.5 * np.mean(r * r) + 0.5 * l2 * w @ w + l1 * np.abs(w).sum()


@pytest.mark.parametrize("penalty", ["ridge", "lasso"])
def test_ridge_and_lasso_reach_sklearn_objective(launch, tmp_path, penalty):
    path, X, y = _diabetes(tmp_path)
    n = len(y)
    if penalty == "ridge":
        alpha = 10.0
        ref = Ridge(alpha=alpha).fit(X, y)
        l2, l1 = alpha / n, 0.0    # sklearn: |r|^2 + alpha |w|^2  ==  n * ours
    else:
        alpha = 0.5
        ref = Lasso(alpha=alpha, max_iter=100000, tol=1e-10).fit(X, y)
        l2, l1 = 0.0, alpha        # sklearn: |r|^2/(2n) + alpha |w|_1  ==  ours
    out = tmp_path / "run"
    launch(4, ["--set", f"data.train='{path}'", "--set", "data.test_fraction=0.0",
               "--set", f"model.l2={l2}", "--set", f"model.l1={l1}",
               "--set", "train.batch_size=0", "--set", "train.epochs=3000",
               "--set", "optimizer.lr=0.1", "--set", "optimizer.momentum=0.9",
               "--set", "optimizer.schedule='constant'", "--out", str(out)],
           timeout=240, check=True)
    ours = summary_of(out)["train_objective"]
    theirs = _objective(X, y, ref.coef_, ref.intercept_, l2=l2, l1=l1)
    assert ours == pytest.approx(theirs, rel=0.01), (ours, theirs)


def test_early_stopping_with_patience(launch, tmp_path):
    out = tmp_path / "run"
    r = launch(2, ["--set", "data.synth.rows=4000", "--set", "train.epochs=200",
                   "--set", "train.patience=3", "--out", str(out)], timeout=180, check=True)
    s = summary_of(out)
    assert "early stop after epoch" in r.stdout
    assert s["epochs"] < 200

"""``data.standardize`` end to end on unscaled data: scikit-learn's breast-cancer split
trained at 4 ranks against ``make_pipeline(StandardScaler(), LogisticRegression())``; the
Scaler every rank holds against StandardScaler at 1, 2 and 3 ranks under every placement
and k-fold; chunks standardised as read (storage) and on the servers (server placement);
the least-squares oracle on the standardised problem; the warning about unscaled features
without the option, and not with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mpisgd.data import write_shard
from mpisgd.data.partition import fold_of, holdout_mask

from .datasets import sets
from .test_train import summary_of

SCRIPT = str(Path(__file__).with_name("standardize_script.py"))
WARNING = "the features' spreads differ by a factor of"
# jobs/logreg.toml as given (lr 0.5, momentum 0.9, cosine, l2 1e-4) but minibatches of
# 32 rows: its batch of 1024 is more than the 426 training rows (one step per epoch).
TRAIN = ["train.batch_size=32", "train.epochs=10"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    """The breast-cancer split of tests/launch/datasets.py, NOT standardised (feature
    spreads from 0.0026 to 570), as train and test shards."""
    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    folder = tmp_path_factory.mktemp("raw")
    write_shard(str(folder / "train.h5"), Xtr, ytr.astype(np.int64), "binary", 2)
    write_shard(str(folder / "test.h5"), Xte, yte.astype(np.int64), "binary", 2)
    return {"train": str(folder / "train.h5"), "test": str(folder / "test.h5"),
            "Xtr": Xtr, "ytr": ytr.astype(np.int64), "Xte": Xte, "yte": yte}


def _job(raw: dict, *overrides: str) -> list[str]:
    return ["jobs/logreg.toml", *sets(f"data.train='{raw['train']}'",
                                      f"data.test='{raw['test']}'", *TRAIN, *overrides)]


def test_breast_cancer_unscaled_matches_the_sklearn_pipeline_at_4_ranks(launch, tmp_path, raw):
    out = tmp_path / "run"
    r = launch(4, _job(raw, "data.standardize=true") + ["--out", str(out)], timeout=120,
               check=True)
    ours = summary_of(out)["test"]["accuracy"]
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(raw["Xtr"], raw["ytr"])
    theirs = pipe.score(raw["Xte"], raw["yte"])
    assert abs(ours - theirs) <= 0.01, (ours, theirs)
    assert WARNING not in r.stdout + r.stderr


def test_unscaled_features_warn_once_naming_the_option(launch, tmp_path, raw):
    r = launch(2, _job(raw) + ["--out", str(tmp_path / "run")], timeout=120, check=True)
    # on stderr, or through a live progress bar on stdout
    lines = [line for line in (r.stdout + r.stderr).splitlines() if WARNING in line]
    assert len(lines) == 1, r.stdout + r.stderr
    assert "data.standardize = true" in lines[0] and "[0@" in lines[0]
    ratio = float(lines[0].split(WARNING)[1].split()[0])
    std = raw["Xtr"].std(axis=0)
    assert ratio == pytest.approx(std.max() / std.min(), rel=0.01)   # printed to 3 digits


def test_chunks_are_standardised_under_storage_and_server_placement(launch, tmp_path, raw):
    """Storage placement reads raw chunks and standardises them as read; server placement
    has the servers do it once. With 2 workers, ps bsp takes allreduce's steps: the same
    training objective, which streams raw rows from storage and standardises them too
    (an unscaled objective would be orders of magnitude larger)."""
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(raw["Xtr"], raw["ytr"])
    objective = {}
    for placement, n, extra in (("storage", 2, []), ("server", 3, ["mode='ps'"])):
        out = tmp_path / placement
        launch(n, _job(raw, "data.standardize=true", f"data.placement='{placement}'",
                       "data.chunk_rows=16", *extra) + ["--out", str(out)], timeout=120,
               check=True)
        s = summary_of(out)
        assert s["test"]["accuracy"] >= pipe.score(raw["Xte"], raw["yte"]) - 0.02
        objective[placement] = s["train_objective"]
    assert objective["storage"] < 0.1
    assert objective["server"] == pytest.approx(objective["storage"], rel=1e-9)


def _cases(raw: dict, size: int) -> list[list[str]]:
    train, test = f"data.train='{raw['train']}'", f"data.test='{raw['test']}'"
    on = "data.standardize=true"
    cases = [[train, test, on],                                   # 0: partition, data.test
             [train, on],                                         # 1: held-out fraction
             [train, on, "data.placement='storage'", "data.chunk_rows=50"],   # 2
             [train, on, "data.folds=5", "data.fold=2"],          # 3: k-fold, fold 2
             [train, "data.placement='storage'"],                 # 4: warn from held-out
             [train, "data.placement='storage'", "data.test_fraction=0.0"]]   # 5: 1st chunk
    if size >= 2:   # 6: a parameter server (holding no rows) and workers streaming
        cases.append([train, on, "mode='ps'", "data.placement='server'"])
    return cases


def _training_rows(case: int, y: np.ndarray) -> np.ndarray:
    n = y.size
    if case == 0:
        return np.arange(n)
    if case == 3:
        return np.flatnonzero(fold_of(0, n, 5, 0, y, np.zeros(2, dtype=np.int64)) != 2)
    return np.flatnonzero(~holdout_mask(0, n, 0.2, seed=0))


@pytest.mark.parametrize("size", [1, 2, 3])
def test_every_rank_holds_standard_scalers_values(launch, tmp_path, raw, size):
    """The Scaler after prepare, on every rank bit for bit, equals StandardScaler's
    mean_ and scale_ on the same training rows (to rounding); the rows in memory are
    StandardScaler.transform's; without the option the warning comes from a sample."""
    cases = _cases(raw, size)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    r = launch(size, [SCRIPT, str(tmp_path), "jobs/logreg.toml", str(tmp_path / "cases.json")],
               module=False, timeout=120)
    assert r.returncode == 0 and f"OK {size}" in r.stdout, r.stderr
    X, y = raw["Xtr"], raw["ytr"]
    for i in range(len(cases)):
        got = np.load(tmp_path / f"case-{i}.npz")
        assert bool(got["same"]), f"case {i}: ranks hold different scalers"
        if i in (4, 5):   # standardize off: no scaler, a warning from the sampled rows
            assert got["mean"].size == 0 and str(got["warnings"]).count(WARNING) == 1
            continue
        rows = _training_rows(i, y)
        sk = StandardScaler().fit(X[rows])
        np.testing.assert_allclose(got["mean"], sk.mean_, rtol=1e-12, err_msg=f"case {i}")
        np.testing.assert_allclose(got["scale"], sk.scale_, rtol=1e-12, err_msg=f"case {i}")
        assert WARNING not in str(got["warnings"])
        if got["train_X"].size:   # partition: X standardised in place
            np.testing.assert_array_equal(got["train_ids"], rows)
            np.testing.assert_allclose(got["train_X"], sk.transform(X[rows]), atol=1e-12)
        held = raw["Xte"] if i == 0 else X[np.setdiff1d(np.arange(y.size), rows)]
        np.testing.assert_allclose(got["test_X"], sk.transform(held), atol=1e-12,
                                   err_msg=f"case {i}: held-out rows")


def test_linear_oracle_solves_the_standardised_problem(launch, tmp_path):
    """Least squares without a penalty has the same fit on raw and standardised features:
    the oracle's objective and test MSE are the raw fit's, the run's gap to it is small,
    and its weights mapped back to raw units are the generator's."""
    rng = np.random.default_rng(0)
    scales, offsets = np.array([1e-2, 1.0, 1e2, 1e3, 10.0]), np.array([5, -3, 1e3, 0, 7.0])
    X = rng.standard_normal((4000, 5)) * scales + offsets
    w = rng.standard_normal(5) / scales
    y = X @ w + 0.5 + 0.1 * rng.standard_normal(4000)
    data = tmp_path / "lin.h5"
    write_shard(str(data), X, y, "regression", 0, true_w=w, true_b=0.5)
    out = tmp_path / "run"
    launch(2, ["jobs/linreg.toml", *sets(f"data.train='{data}'", "data.standardize=true",
                                         "train.epochs=10", "train.batch_size=64"),
               "--out", str(out)], timeout=120, check=True)
    s = summary_of(out)
    held = holdout_mask(0, 4000, 0.2, seed=0)
    A = np.column_stack([X, np.ones(4000)])
    coef, *_ = np.linalg.lstsq(A[~held], y[~held], rcond=None)
    o = s["oracle"]
    assert o["train_objective"] == pytest.approx(
        0.5 * np.mean((A[~held] @ coef - y[~held]) ** 2), rel=1e-8)
    assert o["test_mse"] == pytest.approx(np.mean((A[held] @ coef - y[held]) ** 2), rel=1e-8)
    assert 0 <= o["objective_gap"] < 0.1 * o["train_objective"]
    assert s["weight_rel_error"] < 0.05   # in standardised units it would be about 1

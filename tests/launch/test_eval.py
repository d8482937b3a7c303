"""``mpisgd eval``, ``predict`` and ``cv`` launched as users launch them, at several world
sizes, against the training summary and NumPy references."""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mpisgd.data import open_dataset, read_rows
from mpisgd.data.partition import fold_of

from .datasets import bundled_job, bundled_split, raw_shard


@pytest.fixture(scope="module")
def trained(launch, tmp_path_factory):
    """A logistic model trained at 2 ranks on the bundled breast-cancer split."""
    tmp = tmp_path_factory.mktemp("eval")
    d = bundled_split("breast_cancer", tmp / "bc")
    run = tmp / "run"
    launch(2, bundled_job(d, "jobs/logreg.toml", "model.l2=0.002", "train.epochs=20",
                          "train.batch_size=32", "optimizer.lr=0.05") + ["--out", str(run)],
           timeout=120, check=True)
    with h5py.File(run / "model.h5", "r") as f:
        theta = f["theta"][...]
    d.update(run=run, model=str(run / "model.h5"), theta=theta,
             summary=json.loads((run / "summary.json").read_text()))
    return d


def _numpy_proba(d) -> np.ndarray:
    w, b = d["theta"][:-1].astype(np.float64), float(d["theta"][-1])
    return 1.0 / (1.0 + np.exp(-(d["Xte"] @ w + b)))


@pytest.mark.parametrize("n", [1, 3])
def test_eval_reproduces_training_test_metrics(launch, trained, tmp_path, n):
    out = tmp_path / "metrics.json"
    r = launch(n, ["eval", trained["model"], "--data", trained["test"], "--out", str(out)],
               timeout=60, check=True)
    record = json.loads(out.read_text())
    got, want = record["metrics"], trained["summary"]["test"]
    assert record["world_size"] == n and got["n"] == len(trained["yte"])
    for key, value in want.items():   # every metric training reported, identically
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        else:
            assert got[key] == value, key
    assert abs(got["auc"] - roc_auc_score(trained["yte"], _numpy_proba(trained))) <= 1e-3
    assert f"accuracy {want['accuracy']:.6g}" in r.stdout and "auc" in r.stdout
    assert r.stdout.count("mpisgd eval: metrics written") == 1   # rank 0 speaks


def _check_predictions(path: Path, d) -> None:
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "mpisgd-predictions" and f.attrs["task"] == "binary"
        pred, proba = f["pred"][...], f["proba"][...]
    p = _numpy_proba(d)
    assert pred.shape == proba.shape == (len(d["yte"]),)
    np.testing.assert_allclose(proba, p, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(pred, (p >= 0.5).astype(np.int64))
    assert sorted(q.name for q in path.parent.iterdir()) == [path.name]  # no temporary left


def test_predict_at_3_ranks_matches_numpy(launch, trained, tmp_path):
    out = tmp_path / "sub" / "pred.h5"
    r = launch(3, ["predict", trained["model"], "--data", trained["test"], "--out", str(out)],
               timeout=60, check=True)
    _check_predictions(out, trained)
    assert "143 predictions" in r.stdout


# Tiny blocks and no read-ahead: every rank streams its rows while it holds the token.
STREAMING = """
import sys
from mpisgd import cli
from mpisgd.commands import predict
predict.BLOCK_ROWS, predict.AHEAD_BYTES = 7, 1
sys.exit(cli.main(sys.argv[1:]))
"""

# Rank 1 fails while writing: rank 2 must skip, all agree, the temporary file goes.
FAILING = """
import sys
from mpi4py import MPI
from mpisgd import cli
from mpisgd.commands import predict
write = predict._write
def _write(f, task, first, out):
    if MPI.COMM_WORLD.Get_rank() == 1:
        raise RuntimeError("disk on fire")
    write(f, task, first, out)
predict._write = _write
sys.exit(cli.main(sys.argv[1:]))
"""


def test_predict_streaming_under_the_token(launch, trained, tmp_path):
    out = tmp_path / "pred.h5"
    launch(3, ["-c", STREAMING, "predict", trained["model"], "--data", trained["test"],
               "--out", str(out)], module=False, timeout=60, check=True)
    _check_predictions(out, trained)


def test_predict_failure_on_one_rank_is_agreed_and_leaves_no_file(launch, trained, tmp_path):
    out = tmp_path / "pred.h5"
    t0 = time.monotonic()
    r = launch(3, ["-c", FAILING, "predict", trained["model"], "--data", trained["test"],
                   "--out", str(out)], module=False, timeout=60)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert time.monotonic() - t0 < 20
    assert r.stderr.count("mpisgd: error:") == 1
    assert "rank 1: RuntimeError: disk on fire" in r.stderr
    assert list(tmp_path.iterdir()) == []


SMALL = ["jobs/logreg.toml", "--set", "data.synth.rows=3000", "--set", "data.synth.features=8",
         "--set", "data.synth.shards=3", "--set", "train.epochs=2",
         "--set", "train.batch_size=100", "--set", "optimizer.schedule='constant'",
         "--set", "debug.trace_rows=true"]


def test_cv_three_folds_at_2_ranks(launch, tmp_path):
    out = tmp_path / "cv"
    r = launch(2, ["cv", *SMALL, "--folds", "3", "--out", str(out)], timeout=120, check=True)
    cv = json.loads((out / "cv.json").read_text())
    assert cv["folds"] == 3 and [f["fold"] for f in cv["per_fold"]] == [0, 1, 2]
    for k in range(3):
        assert f"mpisgd cv: fold {k}: " in r.stdout
    assert "mean ± std" in r.stdout or "mean +/- std" in r.stdout
    for name in ("accuracy", "log_loss", "f1"):
        values = [f["test"][name] for f in cv["per_fold"]]
        assert cv["mean"][name] == pytest.approx(np.mean(values), rel=1e-12)
        assert cv["std"][name] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    # The folds against a NumPy reference on the whole dataset (no ranks): each row is
    # in exactly one test fold, and fold k trains on exactly the other rows.
    summary = json.loads((out / "fold-0" / "summary.json").read_text())
    info = open_dataset(summary["train_data"])
    _, y = read_rows(info, 0, info.n_rows)
    folds = fold_of(0, info.n_rows, 3, 0, y, np.zeros(2, dtype=np.int64))
    assert sum(f["n_test"] for f in cv["per_fold"]) == info.n_rows
    for f in cv["per_fold"]:
        k = f["fold"]
        assert f["n_test"] == int((folds == k).sum())
        used = np.concatenate([np.load(out / f"fold-{k}" / "trace" / f"rank{r}.npz")["arr_0"]
                               for r in range(2)])
        np.testing.assert_array_equal(np.sort(used), np.flatnonzero(folds != k))
        share = y[folds == k].mean()   # stratified: the positive share of every fold
        assert abs(share - y.mean()) < 0.005


BAD = [
    # (id, arguments, expected message fragment)
    ("missing-model", ["eval", "{tmp}/nope.h5", "--data", "{test}"], "does not exist"),
    ("not-a-model", ["predict", "{test}", "--data", "{test}", "--out", "{tmp}/p.h5"],
     "is not an mpisgd model"),
    ("feature-count", ["predict", "{model}", "--data", "{wide}", "--out", "{tmp}/p.h5"],
     "has 31 features but model"),
    ("task", ["eval", "{model}", "--data", "{regression}"], "regression task"),
    ("missing-data", ["eval", "{model}", "--data", "{tmp}/none.h5"], "does not exist"),
    ("no-out", ["predict", "{model}", "--data", "{test}"], "required: --out"),
    ("cv-with-test", ["cv", "jobs/logreg.toml", "--folds", "3", "--set",
                      "data.train='{test}'", "--set", "data.test='{test}'"],
     "do not also set data.test"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_clear_error(launch, trained, tmp_path, case):
    _, args, fragment = case
    rng = np.random.default_rng(0)
    files = dict(tmp=tmp_path, test=trained["test"], model=trained["model"],
                 wide=raw_shard(tmp_path / "wide.h5", rng.normal(size=(20, 31)),
                                np.zeros(20, dtype=np.int64), task="binary", n_classes=2),
                 regression=raw_shard(tmp_path / "reg.h5", rng.normal(size=(20, 30)),
                                      rng.normal(size=20)))
    r = launch(2, [a.format(**files) for a in args], timeout=60)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert fragment in r.stderr, r.stderr
    assert r.stderr.count("mpisgd: error:") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "p.h5").exists()

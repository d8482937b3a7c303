"""Whole training jobs launched as users launch them: results against references."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from mpisgd.data import open_dataset, read_rows
from mpisgd.data.partition import holdout_mask

from .datasets import bundled_job, bundled_split


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def theta_of(out: Path) -> np.ndarray:
    with h5py.File(out / "model.h5", "r") as f:
        return f["theta"][...]


def test_default_job_recovers_truth_and_least_squares(launch, tmp_path):
    out = tmp_path / "run"
    r = launch(2, ["--out", str(out)], timeout=240, check=True)
    s = summary_of(out)
    assert "test mse" in r.stdout and "|w - w_true|/|w_true|" in r.stdout
    assert s["weight_rel_error"] < 1e-2
    # The closed-form least-squares fit on the same training rows, scored on the same test rows.
    info = open_dataset(s["train_data"])
    X, y = read_rows(info, 0, info.n_rows)
    held = holdout_mask(0, info.n_rows, 0.2, seed=0)
    A = np.column_stack([X, np.ones(len(X))])
    coef, *_ = np.linalg.lstsq(A[~held], y[~held], rcond=None)
    mse_opt = float(np.mean((A[held] @ coef - y[held]) ** 2))
    assert s["test"]["mse"] == pytest.approx(mse_opt, rel=0.01)
    assert s["n_test"] == int(held.sum()) and s["n_train"] == int((~held).sum())
    for name in ("config.toml", "metrics.jsonl", "model.h5"):
        assert (out / name).is_file()
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == list(range(1, s["epochs"] + 1))


def _sklearn_accuracy(d: dict) -> float:
    clf = LogisticRegression(max_iter=5000).fit(d["Xtr"], d["ytr"])
    return float(clf.score(d["Xte"], d["yte"]))


def test_logistic_breast_cancer_matches_sklearn(launch, tmp_path):
    d = bundled_split("breast_cancer", tmp_path / "bc")
    out = tmp_path / "run"
    launch(2, bundled_job(d, "jobs/logreg.toml", "model.l2=0.002", "train.epochs=40",
                          "train.batch_size=32", "optimizer.lr=0.05") + ["--out", str(out)],
           timeout=120, check=True)
    acc = summary_of(out)["test"]["accuracy"]
    assert acc >= _sklearn_accuracy(d) - 0.02


def test_softmax_digits_matches_sklearn(launch, tmp_path):
    d = bundled_split("digits", tmp_path / "digits")
    out = tmp_path / "run"
    launch(2, bundled_job(d, "jobs/softmax.toml", "model.l2=0.001", "train.epochs=40",
                          "train.batch_size=64", "optimizer.lr=0.05",
                          "optimizer.schedule='constant'") + ["--out", str(out)],
           timeout=120, check=True)
    s = summary_of(out)
    assert s["test"]["accuracy"] >= _sklearn_accuracy(d) - 0.03
    assert len(s["test"]["confusion"]) == 10


SMALL = ["--set", "data.synth.rows=3000", "--set", "data.synth.features=8",
         "--set", "data.synth.shards=3", "--set", "train.epochs=2",
         "--set", "train.batch_size=100", "--set", "optimizer.schedule='constant'"]


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-6), ("float32", 1e-4)])
def test_same_parameters_at_1_2_4_8_ranks(launch, tmp_path, dtype, rtol):
    args = SMALL + ["--set", f"data.synth.dtype='{dtype}'"]
    thetas = {}
    for n in (1, 2, 4, 8):
        out = tmp_path / f"n{n}"
        launch(n, args + ["--out", str(out)], timeout=180, check=True)
        thetas[n] = theta_of(out)
        assert thetas[n].dtype == np.dtype(dtype)
    for n in (2, 4, 8):
        np.testing.assert_allclose(thetas[n], thetas[1], rtol=rtol, atol=rtol * 1e-2)
    if dtype == "float64":  # the same run twice at the same size: bitwise equal
        again = tmp_path / "again"
        launch(4, args + ["--out", str(again)], timeout=120, check=True)
        assert theta_of(again).tobytes() == thetas[4].tobytes()


@pytest.mark.parametrize("n, rows, batch", [(3, 1003, 64), (4, 1001, 1001), (5, 999, 7)])
def test_every_row_exactly_once_per_epoch(launch, tmp_path, n, rows, batch):
    out = tmp_path / "run"
    launch(n, ["--set", f"data.synth.rows={rows}", "--set", "data.synth.features=3",
               "--set", "data.synth.shards=2", "--set", "train.epochs=2",
               "--set", f"train.batch_size={batch}", "--set", "debug.trace_rows=true",
               "--out", str(out)], timeout=120, check=True)
    s = summary_of(out)
    held = holdout_mask(0, rows, 0.2, seed=0)
    train_rows = np.flatnonzero(~held)
    traces = [np.load(out / "trace" / f"rank{r}.npz") for r in range(n)]
    for epoch in range(2):
        used = np.concatenate([t[f"arr_{epoch}"] for t in traces])
        np.testing.assert_array_equal(np.sort(used), train_rows)
    assert s["samples"] == 2 * train_rows.size
    assert s["steps"] == 2 * -(-train_rows.size // batch)


def test_block_shuffle_is_rank_invariant_repeatable_and_uses_every_row(launch, tmp_path):
    """train.shuffle_block = 16: the same parameters at 1 and 3 ranks (to rounding) and
    bitwise on a repeat; every training row once per epoch; each step's rows are whole
    runs of consecutive training rows; resuming from a checkpoint mid-epoch gives the
    uninterrupted run's parameters bitwise."""
    args = SMALL + ["--set", "train.shuffle_block=16", "--set", "debug.trace_rows=true"]
    thetas = {}
    for n in (1, 3):
        out = tmp_path / f"n{n}"
        launch(n, args + ["--out", str(out)], timeout=180, check=True)
        thetas[n] = theta_of(out)
    np.testing.assert_allclose(thetas[3], thetas[1], rtol=1e-6, atol=1e-8)
    again = tmp_path / "again"
    launch(3, args + ["--out", str(again)], timeout=180, check=True)
    assert theta_of(again).tobytes() == thetas[3].tobytes()
    train_rows = np.flatnonzero(~holdout_mask(0, 3000, 0.2, seed=0))
    trace = np.load(tmp_path / "n1" / "trace" / "rank0.npz")
    position = np.searchsorted(train_rows, trace["arr_0"])   # training indices, step order
    np.testing.assert_array_equal(np.sort(position), np.arange(train_rows.size))
    starts = np.flatnonzero(np.diff(position) != 1) + 1
    runs = np.split(position, starts)
    assert len(runs) <= 2 * -(-train_rows.size // 16)   # whole blocks (steps cut a few)
    assert not np.array_equal(position, np.arange(train_rows.size))   # but shuffled
    # stop after step 30 (mid-epoch) with a checkpoint, resume, finish: the same bits
    part = tmp_path / "part"
    launch(3, args + ["--set", "train.max_steps=30", "--set", "checkpoint.every_steps=30",
                      "--out", str(part)], timeout=180, check=True)
    launch(3, args + ["--out", str(part), "--resume", "auto"], timeout=180, check=True)
    assert theta_of(part).tobytes() == thetas[3].tobytes()


def test_full_batch_gd_and_local_mode(launch, tmp_path):
    """Full-batch GD (batch_size = 0) at 2 ranks equals the one-process local mode."""
    args = SMALL + ["--set", "train.batch_size=0", "--set", "train.epochs=20",
                    "--set", "optimizer.momentum=0.0", "--set", "optimizer.lr=0.5"]
    launch(2, args + ["--out", str(tmp_path / "a")], timeout=120, check=True)
    launch(1, args + ["--set", "mode='local'", "--out", str(tmp_path / "b")],
           timeout=120, check=True)
    s = summary_of(tmp_path / "a")
    assert s["steps"] == 20 and s["global_batch"] == s["n_train"]
    np.testing.assert_allclose(theta_of(tmp_path / "a"), theta_of(tmp_path / "b"), rtol=1e-10)

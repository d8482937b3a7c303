"""Parameter-server mode: agreement with allreduce, async convergence, stragglers."""

from __future__ import annotations

import numpy as np
import pytest

from mpisgd.data import open_dataset, read_rows
from mpisgd.data.partition import holdout_mask

from .datasets import bundled_job, bundled_split
from .test_train import SMALL, summary_of, theta_of


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-6), ("float32", 1e-4)])
def test_bsp_equals_allreduce_with_same_workers(launch, tmp_path, dtype, rtol):
    args = SMALL + ["--set", f"data.synth.dtype='{dtype}'", "--set", "optimizer.momentum=0.9"]
    launch(3, args + ["--out", str(tmp_path / "ar")], timeout=120, check=True)
    ref = theta_of(tmp_path / "ar")
    for servers in (1, 2):
        out = tmp_path / f"ps{servers}"
        launch(3 + servers, args + ["--set", "mode='ps'", "--set", f"ps.servers={servers}",
                                    "--out", str(out)], timeout=120, check=True)
        s = summary_of(out)
        assert s["ps"]["workers"] == list(range(servers, servers + 3))
        assert s["ps"]["updates_per_server"] == [s["steps"]] * servers
        np.testing.assert_allclose(theta_of(out), ref, rtol=rtol, atol=rtol * 1e-2)


def _closed_form_mse(summary: dict) -> float:
    info = open_dataset(summary["train_data"])
    X, y = read_rows(info, 0, info.n_rows)
    held = holdout_mask(0, info.n_rows, 0.2, seed=0)
    A = np.column_stack([X, np.ones(len(X))])
    coef, *_ = np.linalg.lstsq(A[~held], y[~held], rcond=None)
    return float(np.mean((A[held] @ coef - y[held]) ** 2))


@pytest.mark.parametrize("consistency", ["asp", "ssp"])
def test_async_linear_reaches_least_squares(launch, tmp_path, consistency):
    out = tmp_path / "run"
    launch(4, ["--set", "mode='ps'", "--set", f"ps.consistency='{consistency}'",
               "--out", str(out)], timeout=180, check=True)
    s = summary_of(out)
    assert s["test"]["mse"] == pytest.approx(_closed_form_mse(s), rel=0.02)
    assert sum(s["ps"]["updates_per_server"]) == 3 * s["steps_per_epoch"] * s["epochs"]


def test_async_logistic_close_to_bsp(launch, tmp_path):
    d = bundled_split("breast_cancer", tmp_path / "bc")
    base = bundled_job(d, "jobs/logreg.toml", "model.l2=0.002", "train.epochs=40",
                       "train.batch_size=32", "optimizer.lr=0.05", "mode='ps'")
    acc = {}
    for c in ("bsp", "asp", "ssp"):
        launch(4, base + ["--set", f"ps.consistency='{c}'", "--out", str(tmp_path / c)],
               timeout=180, check=True)
        acc[c] = summary_of(tmp_path / c)["test"]["accuracy"]
    assert acc["asp"] >= acc["bsp"] - 0.02 and acc["ssp"] >= acc["bsp"] - 0.02, acc


@pytest.mark.parametrize("staleness", [0, 2])
def test_ssp_never_runs_more_than_s_ahead(launch, tmp_path, staleness):
    out = tmp_path / "run"
    launch(4, SMALL + ["--set", "mode='ps'", "--set", "ps.consistency='ssp'",
                       "--set", f"ps.staleness={staleness}", "--set", "debug.slow_rank=3",
                       "--set", "debug.slow_ms=3", "--out", str(out)], timeout=180, check=True)
    ps = summary_of(out)["ps"]
    leads = [int(k) for k in ps["ssp_lead_histogram"]]
    assert max(leads) <= staleness, ps["ssp_lead_histogram"]
    if staleness:  # the fast workers did use the slack they were given
        assert max(leads) == staleness, ps["ssp_lead_histogram"]


def test_backup_worker_drops_the_straggler(launch, tmp_path):
    out = tmp_path / "run"
    # Normal steps take well under 1 ms here; rank 4 sleeps 20 ms per step (> 20x slower).
    launch(5, SMALL + ["--set", "mode='ps'", "--set", "ps.servers=2",
                       "--set", "ps.backup_workers=1", "--set", "debug.slow_rank=4",
                       "--set", "debug.slow_ms=20", "--out", str(out)], timeout=180, check=True)
    s = summary_of(out)
    ps = s["ps"]
    assert ps["gradients_dropped"] > 0
    assert set(ps["dropped_per_worker"]) == {"4"}
    assert ps["updates_per_server"] == [s["steps"], s["steps"]]
    assert ps["worker_steps"]["4"] < s["steps"] // 2   # the straggler did far fewer steps


# A stalled worker, a world too small for the servers, SIGKILL of a worker, a server or
# rank 0: tests/faults (in every ps consistency).

"""Less communication, end to end: compressed gradients (allreduce and PS pushes) and
local SGD train breast-cancer logistic regression as well as exact SGD; runs are
reproducible from the seed; the error-feedback residual and local SGD's averaged state
are checkpointed, so resume is bitwise exact."""

from __future__ import annotations

import math

import numpy as np
import pytest

from .datasets import bundled_job, bundled_split, sets
from .test_train import SMALL, summary_of, theta_of

BASE_EPOCHS = 40


@pytest.fixture(scope="module")
def cancer(tmp_path_factory):
    d = bundled_split("breast_cancer", tmp_path_factory.mktemp("bc"))
    return bundled_job(d, "jobs/logreg.toml", "model.l2=0.002", "train.batch_size=32",
                       "optimizer.lr=0.05")


@pytest.fixture(scope="module")
def exact(launch, cancer, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("exact")
    launch(4, cancer + ["--set", f"train.epochs={BASE_EPOCHS}", "--out", str(out)],
           timeout=180, check=True)
    return summary_of(out)


@pytest.mark.parametrize("n, extra, epochs", [
    (4, ["--set", "comm.compression='topk'"], 2 * BASE_EPOCHS),
    (4, ["--set", "comm.compression='sign'"], 2 * BASE_EPOCHS),
    (4, ["--set", "train.sync_every=8"], BASE_EPOCHS),
    (5, ["--set", "comm.compression='topk'", "--set", "mode='ps'", "--set", "ps.servers=1"],
     2 * BASE_EPOCHS),
], ids=["topk-1%", "sign", "local-sgd-k8", "ps-topk-1%"])
def test_less_communication_reaches_exact_sgd_accuracy(launch, cancer, exact, tmp_path,
                                                       n, extra, epochs):
    out = tmp_path / "run"
    launch(n, cancer + extra + ["--set", f"train.epochs={epochs}", "--out", str(out)],
           timeout=180, check=True)
    s = summary_of(out)
    # Within 1 accuracy point of exact synchronous SGD (143 test rows: at most one more
    # misclassified), and the training objective no worse than 5 % above it.
    assert s["test"]["accuracy"] >= exact["test"]["accuracy"] - 0.01
    assert s["train_objective"] <= exact["train_objective"] * 1.05
    if "comm.compression='topk'" in extra:
        k = math.ceil(0.01 * 31)   # 30 features + bias, 1 %
        c = s["compression"]
        assert c["scheme"] == "topk" and c["error_feedback"] is True
        if n == 4:   # allreduce: [gradient, 4 scalars] dense vs k pairs + 4 exact scalars
            assert c["bytes_per_step_dense"] == 35 * 8
            assert c["bytes_per_step_sent"] == k * 12 + 4 * 8
        assert c["ratio"] > 1.5
    if "train.sync_every=8" in extra:
        assert s["local_sgd"]["averagings"] < s["steps"] / 4


COMPRESSED = SMALL + ["--set", "comm.topk_ratio=0.2", "--set", "checkpoint.every_steps=7",
                      "--set", "train.epochs=3"]


@pytest.mark.parametrize("overrides", [
    ["comm.compression='topk'"],
    ["comm.compression='sign'", "optimizer.momentum=0.9"],
    ["comm.compression='randomk'"],
    ["comm.compression='fp16'", "optimizer.name='adam'", "optimizer.lr=0.01"],
    ["train.sync_every=4", "optimizer.momentum=0.9"],
], ids=["topk", "sign", "randomk", "fp16-adam", "local-sgd"])
def test_reproducible_and_resume_is_bitwise_exact(launch, tmp_path, overrides):
    """Two runs with one seed agree bitwise; a run stopped at step 20 (a checkpoint holding
    the residuals, or local SGD's averaged state) and resumed ends bitwise like them."""
    job = COMPRESSED + sets(*overrides)
    for name in ("a", "b"):
        launch(4, job + ["--out", str(tmp_path / name)], timeout=180, check=True)
    assert theta_of(tmp_path / "a").tobytes() == theta_of(tmp_path / "b").tobytes()
    out = tmp_path / "resumed"
    launch(4, job + ["--set", "train.max_steps=20", "--out", str(out)], timeout=180, check=True)
    r = launch(4, job + ["--out", str(out), "--resume", "auto"], timeout=180, check=True)
    assert "resuming at step 20" in r.stdout
    assert theta_of(out).tobytes() == theta_of(tmp_path / "a").tobytes()
    # Compression (or local SGD) really changed the numbers: it is not silently off.
    plain = tmp_path / "plain"
    launch(4, COMPRESSED + sets(*overrides[1:]) + ["--out", str(plain)], timeout=180,
           check=True)
    assert not np.array_equal(theta_of(plain), theta_of(out))

"""Models and optimizers in distributed runs: MLP accuracy, sharded optimizer state."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier

from .datasets import bundled_job, bundled_split
from .test_train import SMALL, summary_of, theta_of


def test_mlp_digits_at_4_ranks(launch, tmp_path):
    d = bundled_split("digits", tmp_path / "digits")
    out = tmp_path / "run"
    launch(4, bundled_job(d, "jobs/softmax.toml", "model.name='mlp'", "model.hidden=[64]",
                          "model.l2=1e-4", "train.epochs=30", "train.batch_size=32",
                          "optimizer.lr=0.05", "optimizer.schedule='constant'")
           + ["--out", str(out)], timeout=240, check=True)
    ours = summary_of(out)["test"]["accuracy"]
    ref = MLPClassifier(hidden_layer_sizes=(64,), random_state=0, max_iter=500)
    theirs = ref.fit(d["Xtr"], d["ytr"]).score(d["Xte"], d["yte"])
    assert ours >= 0.95, f"mpisgd MLP {ours:.4f}, scikit-learn MLPClassifier {theirs:.4f}"
    assert ours >= theirs - 0.03, f"gap to scikit-learn: {theirs - ours:+.4f}"


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "adagrad"])
def test_sharded_optimizer_state_equals_unsharded(launch, tmp_path, optimizer):
    """PS bsp with 2 servers (state split by key range) = allreduce (state whole)."""
    args = SMALL + ["--set", f"optimizer.name='{optimizer}'", "--set", "optimizer.lr=0.01",
                    "--set", "optimizer.clip_norm=0.5", "--set", "model.l2=0.01"]
    launch(3, args + ["--out", str(tmp_path / "ar")], timeout=120, check=True)
    launch(5, args + ["--set", "mode='ps'", "--set", "ps.servers=2",
                      "--out", str(tmp_path / "ps")], timeout=120, check=True)
    np.testing.assert_allclose(theta_of(tmp_path / "ps"), theta_of(tmp_path / "ar"),
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("consistency", ["bsp", "asp", "ssp"])
def test_mlp_with_adam_in_every_ps_consistency(launch, tmp_path, consistency):
    """One flat parameter vector: the MLP and Adam's sharded state work in every PS mode."""
    d = bundled_split("digits", tmp_path / "digits")
    out = tmp_path / "run"
    launch(4, bundled_job(d, "jobs/softmax.toml", "model.name='mlp'", "model.hidden=[32]",
                          "optimizer.name='adam'", "optimizer.lr=0.003", "train.epochs=15",
                          "train.batch_size=32", "optimizer.schedule='constant'",
                          "mode='ps'", "ps.servers=2", f"ps.consistency='{consistency}'")
           + ["--out", str(out)], timeout=240, check=True)
    assert summary_of(out)["test"]["accuracy"] >= 0.9

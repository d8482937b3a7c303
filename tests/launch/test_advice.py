"""Training that goes wrong says so: a loss grown by orders of magnitude, a minibatch
larger than the data, a classifier below the majority class; and the normal default
job says none of it. Each warning is on stderr and in summary.json's ``warnings``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mpisgd.data import write_shard

from .datasets import bundled_job, bundled_split, sets


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _kinds(out: Path) -> list[str]:
    return [w["kind"] for w in _summary(out)["warnings"]]


def test_normal_default_job_has_no_warning(launch, tmp_path):
    out = tmp_path / "run"
    r = launch(2, ["--out", str(out)], timeout=180, check=True)
    assert _summary(out)["warnings"] == []
    assert "warning" not in r.stderr, r.stderr


def test_growing_loss_warns_naming_lr_and_standardize(launch, tmp_path):
    """optimizer.lr = 3 on the default job: the loss grows to ~1e9 in the first epoch
    and stays finite (lr = 5 reaches Inf, the rollback's case, within two epochs)."""
    out = tmp_path / "run"
    r = launch(2, sets("optimizer.lr=3", "train.epochs=2") + ["--out", str(out)],
               timeout=120, check=True)
    s = _summary(out)
    [w] = s["warnings"]
    assert w["kind"] == "divergence" and w["epoch"] == 1 and w["lr"] == 3.0
    assert w["train_loss"] > 100 * w["start_loss"] > 0
    for text in ("optimizer.lr (now 3; try 0.3)", "data.standardize = true"):
        assert text in w["message"] and text in r.stderr
    assert r.stderr.count("training loss grew") == 1   # once, not every epoch
    # Huge numbers in scientific notation: the final line's gap was 140 digits long.
    final = next(line for line in r.stdout.splitlines() if line.startswith("mpisgd: done"))
    gap = final.split("test MSE ")[1]
    assert "e+" in gap and len(gap) < 12, final


def test_batch_larger_than_the_training_rows_warns(launch, tmp_path):
    """breast cancer's 426 training rows with the shipped batch of 512: one step per
    epoch."""
    d = bundled_split("breast_cancer", tmp_path / "bc")
    out = tmp_path / "run"
    r = launch(2, bundled_job(d, "jobs/logreg.toml", "train.batch_size=512",
                              "train.epochs=2") + ["--out", str(out)], timeout=120, check=True)
    s = _summary(out)
    [w] = [w for w in s["warnings"] if w["kind"] == "batch"]
    assert w["batch_size"] == 512 and w["n_train"] == s["n_train"] == len(d["ytr"])
    assert s["steps_per_epoch"] == 1
    assert f"train.batch_size = 512 exceeds the {s['n_train']} training rows" in r.stderr
    assert "one step per epoch" in w["message"]


def _flipped(d: dict, folder: Path) -> dict:
    """The split's labels inverted: class 1 becomes the minority (37 %)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"train": str(folder / "train.h5"), "test": str(folder / "test.h5")}
    for part, X, y in (("train", d["Xtr"], d["ytr"]), ("test", d["Xte"], d["yte"])):
        write_shard(out[part], X, (1 - y).astype(np.int64), "binary", 2)
    return out


@pytest.mark.parametrize("rows", ["test", "training"])
def test_classifier_below_the_majority_class_warns(launch, tmp_path, rows):
    """A classifier made to fail. test: held-out labels the inverse of what training
    learned. training (no held-out rows, so the training rows are scored): labels
    inverted so that class 1 is the minority, and a step too small to move the
    parameters from zero, so every row gets P(y=1) = 0.5, that is class 1."""
    d = bundled_split("breast_cancer", tmp_path / "bc")
    flipped = _flipped(d, tmp_path / "flip")
    if rows == "test":
        args = bundled_job(dict(d, test=flipped["test"]), "jobs/logreg.toml",
                           "train.epochs=3", "train.batch_size=32")
    else:
        args = ["jobs/logreg.toml", *sets(f"data.train='{flipped['train']}'",
                                          "data.test_fraction=0.0", "train.epochs=1",
                                          "train.batch_size=32", "optimizer.lr=1e-30")]
    out = tmp_path / "run"
    r = launch(2, args + ["--out", str(out)], timeout=120, check=True)
    s = _summary(out)
    [w] = [w for w in s["warnings"] if w["kind"] == "majority"]
    labels = 1 - (d["yte"] if rows == "test" else d["ytr"])
    assert w["rows"] == rows
    assert w["majority_rate"] == pytest.approx(max(labels.mean(), 1 - labels.mean()))
    if rows == "test":
        assert w["accuracy"] == pytest.approx(s["test"]["accuracy"])
        assert w["accuracy"] < 0.2   # the inverse of a good classifier
    else:
        assert w["accuracy"] == pytest.approx(labels.mean())   # class 1 for every row
    assert w["accuracy"] < w["majority_rate"]
    assert f"the {rows} accuracy" in r.stderr and "majority-class rate" in r.stderr

"""Bad input and failing ranks: a clear message, a nonzero exit, and no hang (4 ranks)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from .datasets import raw_shard

LIMIT = 20.0  # seconds: every bad input must end the whole job within this


def _bad_files(tmp):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 4))
    y = rng.normal(size=100)
    nan_X = X.copy()
    nan_X[37, 2] = np.nan
    files = {
        "shape": raw_shard(tmp / "shape.h5", X, y[:99]),
        "nan": raw_shard(tmp / "nan.h5", nan_X, y),
        "labels": raw_shard(tmp / "labels.h5", X, np.where(y > 0, 1, 0).astype(np.int64) + (np.arange(100) == 5) * 6,
                            task="binary", n_classes=2),
        "empty": raw_shard(tmp / "empty.h5", np.empty((0, 4)), np.empty(0)),
        "tiny": raw_shard(tmp / "tiny.h5", X[:3], y[:3]),
        "names": raw_shard(tmp / "names.h5", X, y, x_name="features"),
        "intX": raw_shard(tmp / "intX.h5", X.astype(np.int32), y),
    }
    (tmp / "afile").write_text("not a folder")
    (tmp / "syntax.toml").write_text("[model\nname = 'linear'\n")
    return files


CASES = [
    # (id, arguments, expected message fragment)
    ("missing-file", ["--set", "data.train='{tmp}/nope.h5'"], "does not exist"),
    ("unknown-key", ["--set", "optimizer.lrr=0.1"], "Did you mean 'optimizer.lr'"),
    ("negative-lr", ["--set", "optimizer.lr=-0.1"],
     "The 'optimizer.lr' parameter must be a float in (0, inf). Got -0.1 instead."),
    ("unknown-model", ["--set", "model.name='svm'"], "Got 'svm' instead"),
    ("syntax-error", ["{tmp}/syntax.toml"], "not valid TOML"),
    ("shape-mismatch", ["--set", "data.train='{shape}'"], "99"),
    ("nan-in-X", ["--set", "data.train='{nan}'"], "NaN"),
    ("labels-out-of-range", ["--set", "data.train='{labels}'", "--set", "model.name='logistic'"],
     "label"),
    ("empty-dataset", ["--set", "data.train='{empty}'"], "empty"),
    ("fewer-rows-than-ranks", ["--set", "data.train='{tiny}'"],
     "has 3 rows but the job runs 4 worker ranks"),
    ("unwritable-output", ["--out", "{tmp}/afile/run"], "not writable"),
    ("wrong-dataset-names", ["--set", "data.train='{names}'"], "'X'"),
    ("integer-X", ["--set", "data.train='{intX}'"], "int32"),
    ("model-task-mismatch", ["--set", "model.name='logistic'"], "cannot learn a regression task"),
    ("local-mode-many-ranks", ["--set", "mode='local'"], "mode 'local' runs on one rank"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_clear_error_fast(launch, tmp_path, case):
    _, args, fragment = case
    files = _bad_files(tmp_path)
    args = [a.format(tmp=tmp_path, **files) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    t0 = time.monotonic()
    r = launch(4, args, timeout=60)
    elapsed = time.monotonic() - t0
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert elapsed < LIMIT
    assert fragment in r.stderr, r.stderr
    # One clear message, printed once (by rank 0), without a traceback.
    assert r.stderr.count("mpisgd: error:") == 1, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("step", [0, 3])
def test_exception_on_one_rank_aborts_whole_job(launch, tmp_path, step):
    t0 = time.monotonic()
    r = launch(4, ["--set", "debug.fail_rank=2", "--set", f"debug.fail_step={step}",
                   "--set", "data.synth.rows=5000", "--out", str(tmp_path / "run")], timeout=60)
    assert r.returncode != 0
    assert time.monotonic() - t0 < LIMIT
    assert "mpisgd: error on rank 2" in r.stderr
    assert "injected failure in the gradient kernel" in r.stderr


def test_divergence_is_a_training_error(launch, tmp_path):
    r = launch(4, ["--set", "optimizer.lr=1e6", "--set", "data.synth.rows=5000",
                   "--out", str(tmp_path / "run")], timeout=60)
    assert r.returncode == 4, r.stderr
    assert "NaN/Inf" in r.stderr and r.stderr.count("mpisgd: error:") == 1

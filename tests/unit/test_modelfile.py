"""The model file as an interface: the layout docs/model-file.md documents, read back with
its own h5py + NumPy recipe; mpisgd.load_model against the kernels; old files; errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, r2_score

import mpisgd
from mpisgd import kernels
from mpisgd.config import load_config
from mpisgd.data.scale import Scaler
from mpisgd.errors import DataError
from mpisgd.models import ModelSpec, spec_n_params
from mpisgd.store.modelfile import ORACLE, ORACLE_FORMAT, write_model

ROOT = Path(__file__).resolve().parents[2]
D = 6

# (id, spec, task of the data, labels of the classes or None)
SPECS = [
    ("linear", ModelSpec("linear", D, 0), "regression", None),
    ("logistic", ModelSpec("logistic", D, 2), "binary", [-1, 1]),
    ("softmax", ModelSpec("softmax", D, 3), "multiclass", [1, 2, 3]),
    ("softmax-on-binary", ModelSpec("softmax", D, 2), "binary", [2.5, 4.0]),
    ("mlp-regression", ModelSpec("mlp", D, 0, (5,), "tanh"), "regression", None),
    ("mlp-binary", ModelSpec("mlp", D, 2, (4, 3), "relu"), "binary", [0, 7]),
    ("mlp-multiclass", ModelSpec("mlp", D, 4, (5, 4, 3), "relu"), "multiclass", None),
    ("softmax-names", ModelSpec("softmax", D, 3), "multiclass", ["setosa", "versicolor",
                                                                "virginica"]),
    ("logistic-names", ModelSpec("logistic", D, 2), "binary", ["benign", "malignant"]),
]


def _recipe():
    """The ``predict(path, X)`` of docs/model-file.md, executed as a user would copy it."""
    text = (ROOT / "docs" / "model-file.md").read_text()
    section = text.split("## Predictions with h5py and NumPy", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)   # the documentation's own example, as a user copies it
    return namespace["predict"]


def _model(tmp_path, spec, task, labels, scaler=None, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(scale=0.8, size=spec_n_params(spec))
    cfg = load_config(None, [])
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_model(tmp_path, theta, spec, task, cfg, classes=labels, scaler=scaler,
                       feature_names=[f"f{j}" for j in range(D)], train_data="somewhere")
    return path, theta


@pytest.mark.parametrize("standardised", [False, True], ids=["raw", "standardised"])
@pytest.mark.parametrize("case", SPECS, ids=[c[0] for c in SPECS])
def test_docs_recipe_equals_load_model_and_the_kernel(tmp_path, case, standardised):
    _, spec, task, labels = case
    rng = np.random.default_rng(1)
    scaler = Scaler(rng.normal(size=D) * 10, rng.uniform(0.5, 20, size=D)) \
        if standardised else None
    path, theta = _model(tmp_path, spec, task, labels, scaler)
    X = rng.normal(size=(200, D)) * (scaler.scale if scaler else 1) \
        + (scaler.mean if scaler else 0)
    model = mpisgd.load_model(tmp_path)   # the run folder: its model.h5
    want_pred, want_proba = _recipe()(path, X)
    # The kernel on the standardised rows, computed here without load_model.
    Z = scaler.transform(X) if scaler else X
    out = kernels.spec_predict(spec, np.ascontiguousarray(Z), theta)
    pred = model.predict(X)
    if task == "regression":
        assert want_proba is None and not hasattr(model, "predict_proba")
        np.testing.assert_allclose(pred, want_pred, rtol=1e-10, atol=1e-10)
        np.testing.assert_array_equal(pred, out)
        return
    classes = np.arange(spec.n_classes) if labels is None else np.asarray(labels)
    np.testing.assert_array_equal(model.classes_, classes)
    assert set(np.unique(pred)) <= set(classes.tolist())
    np.testing.assert_array_equal(pred, want_pred)
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), spec.n_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(proba, want_proba, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(proba[:, -1] if out.ndim == 1 else proba, out)


@pytest.mark.parametrize("case", SPECS[:3] + SPECS[5:6], ids=lambda c: c[0])
def test_the_documented_layout(tmp_path, case):
    _, spec, task, labels = case
    path, theta = _model(tmp_path, spec, task, labels, Scaler(np.ones(D), np.full(D, 2.0)))
    with h5py.File(path, "r") as f:
        a = f.attrs
        assert (a["format"], a["format_version"], a["model"], a["task"]) == \
            ("mpisgd-model", 2, spec.name, task)
        assert (a["n_features"], a["n_classes"], a["n_outputs"]) == \
            (D, spec.n_classes, spec.n_outputs)
        assert a["output"] == {"regression": "identity", "binary": "sigmoid",
                               "multiclass": "softmax"}[spec.task]
        sizes = spec.sizes
        assert a["n_layers"] == len(sizes) - 1 == len(f["weights"]) // 2
        for i in range(len(sizes) - 1):
            assert f[f"weights/W{i}"].shape == (sizes[i], sizes[i + 1])
            assert f[f"weights/b{i}"].shape == (sizes[i + 1],)
        np.testing.assert_array_equal(f["theta"][...], theta)
        np.testing.assert_array_equal(f["scaler/scale"][...], np.full(D, 2.0))
        assert list(a["feature_names"]) == [f"f{j}" for j in range(D)]
        assert ("classes" in f) == (task != "regression")
        if task != "regression":
            assert f["classes"].dtype == (np.int64 if labels is None or
                                          all(float(v).is_integer() for v in labels)
                                          else np.float64)


def test_scores_follow_scikit_learn(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, D))
    _model(tmp_path / "c", SPECS[2][1], "multiclass", [1, 2, 3])
    clf = mpisgd.load_model(tmp_path / "c" / "model.h5")
    y = rng.choice([1, 2, 3], size=300)
    assert clf.score(X, y) == pytest.approx(accuracy_score(y, clf.predict(X)), abs=0)
    _model(tmp_path / "r", SPECS[0][1], "regression", None)
    reg = mpisgd.load_model(tmp_path / "r")
    y = reg.predict(X) + rng.normal(size=300)
    assert reg.score(X, y) == pytest.approx(r2_score(y, reg.predict(X)), rel=1e-12)
    with pytest.raises(AttributeError, match="regression model.*use predict"):
        reg.predict_proba(X)
    with pytest.raises(ValueError, match=f"rows with {D} features"):
        reg.predict(X[:, :3])
    # integer rows become float64, as scikit-learn's estimators take them
    np.testing.assert_array_equal(clf.predict(np.ones((2, D), dtype=np.int32)),
                                  clf.predict(np.ones((2, D))))


def test_class_names_are_utf8_strings_and_score_takes_them(tmp_path):
    names = ["benign", "malignant", "naïve, quoted\""]
    path, _ = _model(tmp_path, ModelSpec("softmax", D, 3), "multiclass", names)
    with h5py.File(path, "r") as f:
        info = h5py.check_string_dtype(f["classes"].dtype)
        assert info is not None and info.encoding == "utf-8"
        assert f["classes"].asstr()[...].tolist() == names
    model = mpisgd.load_model(path)
    assert model.classes_.dtype.kind == "U" and model.classes_.tolist() == names
    X = np.random.default_rng(4).normal(size=(50, D))
    pred = model.predict(X)
    assert pred.dtype.kind == "U" and set(pred.tolist()) <= set(names)
    y = np.array(names)[np.random.default_rng(5).integers(0, 3, size=50)]
    want = accuracy_score(y, pred)
    for given in (y, y.tolist(), y.astype(object), np.char.encode(y, "utf-8")):
        assert model.score(X, given) == pytest.approx(want, abs=0)
    with pytest.raises(ValueError, match=r"y holds numbers .* classes of .* are strings: "
                                         r"\['benign'"):
        model.score(X, np.zeros(50, dtype=np.int64))


def test_version_1_files_and_old_oracles_still_load(tmp_path):
    theta = np.arange(3 * (D + 1), dtype=np.float32) / 10
    with h5py.File(tmp_path / "v1.h5", "w") as f:   # as mpisgd wrote it before version 2
        f.create_dataset("theta", data=theta)
        f.attrs.update(format="mpisgd-model", format_version=1, model="softmax",
                       n_features=D, n_classes=3, task="multiclass")
    model = mpisgd.load_model(tmp_path / "v1.h5")
    assert model.scaler is None and model.classes_.tolist() == [0, 1, 2]
    X = np.random.default_rng(0).normal(size=(5, D)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(X), kernels.spec_predict(
        model.spec, X, theta).argmax(axis=1))
    oracle = tmp_path / "run"
    oracle.mkdir()
    with h5py.File(oracle / ORACLE, "w") as f:
        f.create_dataset("theta", data=np.arange(D + 1, dtype=np.float64))
        f.attrs.update(format=ORACLE_FORMAT, train_data="x")
    old = mpisgd.load_model(oracle)   # a solve run folder: its oracle.h5
    assert (old.model_name, old.task) == ("linear", "regression")
    np.testing.assert_allclose(old.predict(np.ones((1, D))), [sum(range(D)) + D])


def test_oracle_in_the_model_layout(tmp_path):
    spec = ModelSpec("linear", D, 0)
    write_model(tmp_path, np.arange(D + 1.0), spec, "regression", load_config(None, []),
                name=ORACLE, kind=ORACLE_FORMAT)
    model = mpisgd.load_model(tmp_path / ORACLE)
    assert model.model.kind == ORACLE_FORMAT
    np.testing.assert_allclose(model.predict(np.eye(D)), np.arange(D) + D)


def test_refused_with_a_message_naming_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"'.*empty' is a folder without model.h5 or oracle.h5"):
        mpisgd.load_model(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        mpisgd.load_model(tmp_path / "nope.h5")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="is not an mpisgd model: not a readable HDF5"):
        mpisgd.load_model(tmp_path / "x.csv")
    path, _ = _model(tmp_path, SPECS[2][1], "multiclass", [1, 2, 3])
    with h5py.File(path, "r+") as f:
        del f["classes"]
        f.create_dataset("classes", data=[1, 2])
    with pytest.raises(DataError, match="'classes' has shape"):
        mpisgd.load_model(path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 3
    with pytest.raises(DataError, match="written by a newer mpisgd"):
        mpisgd.load_model(path)


def test_import_mpisgd_stays_light():
    """``import mpisgd`` loads neither numba, h5py nor MPI; load_model pulls them in."""
    code = ("import sys, mpisgd; heavy = {'numba', 'h5py', 'mpi4py.MPI'} & set(sys.modules);"
            "assert not heavy, heavy; assert callable(mpisgd.load_model);"
            "assert 'mpi4py.MPI' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=str(ROOT), timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr

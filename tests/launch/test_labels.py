"""The user's labels end to end: CSV files converted with ``mpisgd data convert``, models
trained on them (standardised) at 2 ranks, and ``mpisgd predict`` / ``eval`` against
``mpisgd.load_model`` in this one process, for every model kind and solve's oracle; and
labels that are words (class names) through every prediction format."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

import mpisgd
from mpisgd.commands.data import main as data_main
from mpisgd.data import open_dataset, read_rows

from .datasets import sets

QUICK = ["train.batch_size=32", "data.standardize=true", "train.seed=1"]

# kind: (dataset, labels added to sklearn's 0..C-1, job, overrides)
KINDS = {
    "linear": ("diabetes", 0, "jobs/linreg.toml",
               ["train.epochs=8", "optimizer.lr=0.01", "optimizer.schedule='constant'"]),
    "logistic": ("breast_cancer", None, "jobs/logreg.toml",   # labels 2/4, as Wisconsin's
                 ["train.epochs=8", "optimizer.lr=0.05"]),
    "softmax": ("wine", 1, "jobs/softmax.toml", ["train.epochs=15", "optimizer.lr=0.05"]),
    "mlp": ("wine", 1, "jobs/softmax.toml",
            ["model.name='mlp'", "model.hidden=[8]", "train.epochs=15", "optimizer.lr=0.05"]),
}
LOADERS = {"diabetes": load_diabetes, "breast_cancer": load_breast_cancer, "wine": load_wine}


def _csv_dataset(name: str, shift, folder) -> dict:
    """sklearn's raw (unscaled) data as a CSV with a header, converted by the CLI."""
    X, y = LOADERS[name](return_X_y=True)
    labels = y.astype(np.float64) if name == "diabetes" else \
        (2 + 2 * y if shift is None else y + shift)
    csv = folder / f"{name}.csv"
    header = ",".join([f"x{j}" for j in range(X.shape[1])] + ["label"])
    np.savetxt(csv, np.column_stack([X, labels]), delimiter=",", header=header, comments="",
               fmt="%.10g")
    h5 = folder / f"{name}.h5"
    task = ["--task", "regression"] if name == "diabetes" else []
    if not h5.exists():
        assert data_main(["convert", str(csv), str(h5), *task]) == 0
    info = open_dataset(h5)
    Xr, codes = read_rows(info, 0, info.n_rows)
    original = codes if info.task == "regression" else info.label_values[codes]
    return {"csv": str(csv), "h5": str(h5), "X": Xr, "labels": original}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labels")
    return {name: _csv_dataset(name, KINDS[k][1], folder)
            for k, (name, *_) in KINDS.items()} | {"folder": folder}


@pytest.fixture(scope="module")
def runs(launch, data):
    """``get(kind)``: the run folder of a model of that kind trained at 2 ranks on its
    converted CSV (trained on first use, once per module)."""
    done = {}

    def get(kind):
        if kind not in done:
            name, _, job, overrides = KINDS[kind]
            run = data["folder"] / f"run-{kind}"
            launch(2, [job, *sets(f"data.train='{data[name]['h5']}'", *QUICK, *overrides),
                       "--out", str(run)], timeout=120, check=True)
            done[kind] = run
        return done[kind]

    return get


@pytest.fixture(params=list(KINDS))
def trained(request, runs, data):
    kind = request.param
    return kind, runs(kind), data[KINDS[kind][0]]


def test_predict_equals_load_model_for_every_model_kind(launch, trained, tmp_path):
    kind, run, d = trained
    out = tmp_path / "pred.npy"
    launch(2, ["predict", str(run), "--data", d["h5"], "--out", str(out)], timeout=60,
           check=True)
    model = mpisgd.load_model(run)
    assert model.model_name == kind
    assert model.scaler is not None   # data.standardize: stored and applied
    pred = model.predict(d["X"])
    np.testing.assert_array_equal(np.load(out), pred)   # bit for bit, in the user's labels
    if kind == "linear":
        assert model.score(d["X"], d["labels"]) > 0.3
    else:
        assert set(np.unique(pred)) <= set(np.unique(d["labels"]))
        assert model.score(d["X"], d["labels"]) > 0.85
        np.testing.assert_allclose(model.predict_proba(d["X"]).sum(axis=1), 1, rtol=1e-5)


def test_wine_labelled_1_2_3_predicts_1_2_3_in_every_format(launch, runs, data, tmp_path):
    d, run = data["wine"], runs("softmax")
    model = mpisgd.load_model(run)
    assert model.classes_.tolist() == [1, 2, 3]
    want, proba = model.predict(d["X"]), model.predict_proba(d["X"])
    for ext in ("csv", "h5"):
        launch(2, ["predict", str(run), "--data", d["h5"], "--out", str(tmp_path / f"p.{ext}")],
               timeout=60, check=True)
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "prediction,proba_1,proba_2,proba_3" and len(lines) == len(want) + 1
    table = np.loadtxt(lines[1:], delimiter=",")
    np.testing.assert_array_equal(table[:, 0], want)
    np.testing.assert_array_equal(table[:, 1:].astype(np.float32), proba)   # %.9g: exact
    with h5py.File(tmp_path / "p.h5", "r") as f:
        assert f["pred"].dtype == np.int64 and f["classes"][...].tolist() == [1, 2, 3]
        np.testing.assert_array_equal(f["pred"][...], want)
        np.testing.assert_array_equal(f["proba"][...], proba)
    metrics = tmp_path / "m.json"
    launch(2, ["eval", str(run), "--data", d["h5"], "--out", str(metrics)], timeout=60,
           check=True)
    accuracy = json.loads(metrics.read_text())["metrics"]["accuracy"]
    assert accuracy == pytest.approx(model.score(d["X"], d["labels"]), abs=1e-12)


def test_solve_oracle_is_read_by_eval_predict_and_load_model(launch, data, tmp_path):
    d = data["diabetes"]
    run = tmp_path / "solve"
    launch(2, ["solve", "jobs/linreg.toml", *sets(f"data.train='{d['h5']}'"), "--out",
               str(run)], timeout=120, check=True)
    oracle = mpisgd.load_model(run / "oracle.h5")
    assert oracle.model.kind == "mpisgd-oracle" and oracle.model_name == "linear"
    launch(2, ["predict", str(run / "oracle.h5"), "--data", d["h5"], "--out",
               str(tmp_path / "p.npy")], timeout=60, check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), oracle.predict(d["X"]))
    launch(1, ["eval", str(run), "--data", d["h5"], "--out", str(tmp_path / "m.json")],
           timeout=60, check=True)
    r2 = json.loads((tmp_path / "m.json").read_text())["metrics"]["r2"]
    assert r2 == pytest.approx(oracle.score(d["X"], d["labels"]), rel=1e-6)


@pytest.mark.parametrize("case", ["csv-as-train", "folder-as-model", "bad-extension",
                                  "other-labels"])
def test_clear_errors(launch, runs, data, tmp_path, case):
    d = data["wine"]
    if case == "other-labels":   # wine converted again, labelled 0/1/2 this time
        X, y = load_wine(return_X_y=True)
        np.savetxt(tmp_path / "w.csv", np.column_stack([X, y]), delimiter=",", fmt="%.10g")
        assert data_main(["convert", str(tmp_path / "w.csv"), str(tmp_path / "w.h5")]) == 0
        args = ["eval", str(runs("softmax")), "--data", str(tmp_path / "w.h5")]
        fragment = "stand for the labels [0, 1, 2], but the model's for [1, 2, 3]"
    elif case == "csv-as-train":
        args = ["jobs/softmax.toml", *sets(f"data.train='{d['csv']}'")]
        fragment = f"is a CSV file, not an mpisgd dataset (HDF5 shards); convert it first: " \
                   f"`mpisgd data convert {d['csv']}"
    elif case == "folder-as-model":
        (tmp_path / "run").mkdir()
        args = ["eval", str(tmp_path / "run"), "--data", d["h5"]]
        fragment = "is a folder without model.h5 or oracle.h5"
    else:
        args = ["predict", str(tmp_path), "--data", d["h5"], "--out", str(tmp_path / "p.txt")]
        fragment = "has the extension '.txt'; the format of the predictions follows it: " \
                   "one of .h5, .hdf5, .csv, .npy"
    r = launch(2, args, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert fragment in r.stderr and r.stderr.count("mpisgd: error:") == 1, r.stderr
    assert "Traceback" not in r.stderr and "errno" not in r.stderr
    assert not (tmp_path / "p.txt").exists()


# ---------------------------------------------------------------------------------
# Word labels (class names), as scikit-learn takes them: CSV -> convert -> train ->
# predict in every format, load_model and eval.

NAMES = {"breast_cancer": ["malignant", "benign"],        # sklearn's 0 and 1
         "wine": ["barolo", "grignolino", "barbera"]}
WORD_JOBS = {"breast_cancer": ("jobs/logreg.toml", ["train.epochs=6", "optimizer.lr=0.05"]),
             "wine": ("jobs/softmax.toml", ["train.epochs=15", "optimizer.lr=0.05"])}


def _words_dataset(name: str, folder, names=None) -> dict:
    """sklearn's data as a CSV whose label column 'diagnosis' holds words, converted by
    the CLI naming that column."""
    X, y = LOADERS[name](return_X_y=True)
    words = np.array(names or NAMES[name])[y]
    src = folder / f"{name}-words.csv"
    with open(src, "w") as fh:
        fh.write(",".join([f"x{j}" for j in range(X.shape[1])] + ["diagnosis"]) + "\n")
        fh.writelines(",".join([*(f"{v:.10g}" for v in row), w]) + "\n"
                      for row, w in zip(X, words))
    h5 = folder / f"{name}-words.h5"
    assert data_main(["convert", str(src), str(h5), "--label-column", "diagnosis"]) == 0
    info = open_dataset(h5)
    Xr, codes = read_rows(info, 0, info.n_rows)
    np.testing.assert_array_equal(info.label_values[codes], words)
    return {"h5": str(h5), "X": Xr, "labels": words, "info": info}


@pytest.fixture(scope="module")
def words(launch, tmp_path_factory):
    """name: the word-labelled dataset and the run folder of a model trained on it at
    2 ranks (data.standardize)."""
    folder = tmp_path_factory.mktemp("words")
    out = {}
    for name, (job, overrides) in WORD_JOBS.items():
        d = _words_dataset(name, folder)
        d["run"] = folder / f"run-{name}"
        launch(2, [job, *sets(f"data.train='{d['h5']}'", *QUICK, *overrides), "--out",
                   str(d["run"])], timeout=120, check=True)
        out[name] = d
    return out | {"folder": folder}


def test_breast_cancer_words_predict_csv_load_model_and_eval(launch, words, tmp_path):
    d = words["breast_cancer"]
    assert d["info"].label_values.tolist() == ["benign", "malignant"]
    out = tmp_path / "pred.csv"
    launch(2, ["predict", str(d["run"]), "--data", d["h5"], "--out", str(out)], timeout=60,
           check=True)
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["prediction", "proba_benign", "proba_malignant"]
    written = np.array([r[0] for r in rows[1:]])
    assert set(written) == {"benign", "malignant"} and len(written) == len(d["labels"])
    model = mpisgd.load_model(d["run"])
    assert model.classes_.dtype.kind == "U" and model.classes_.tolist() == ["benign",
                                                                           "malignant"]
    np.testing.assert_array_equal(model.predict(d["X"]), written)
    np.testing.assert_array_equal(np.array([r[1:] for r in rows[1:]], dtype=np.float32),
                                  model.predict_proba(d["X"]))
    accuracy = model.score(d["X"], d["labels"])   # y in the strings
    assert accuracy > 0.9
    assert accuracy == model.score(d["X"], d["labels"].tolist())
    metrics = tmp_path / "m.json"
    launch(2, ["eval", str(d["run"]), "--data", d["h5"], "--out", str(metrics)], timeout=60,
           check=True)
    assert json.loads(metrics.read_text())["metrics"]["accuracy"] == \
        pytest.approx(accuracy, abs=1e-12)


def test_wine_names_in_npy_and_h5_and_eval_refuses_other_names(launch, words, tmp_path):
    d = words["wine"]
    model = mpisgd.load_model(d["run"])
    assert model.classes_.tolist() == ["barbera", "barolo", "grignolino"]
    want, proba = model.predict(d["X"]), model.predict_proba(d["X"])
    assert model.score(d["X"], d["labels"]) > 0.85
    for ext in ("npy", "h5"):
        launch(2, ["predict", str(d["run"]), "--data", d["h5"], "--out",
                   str(tmp_path / f"p.{ext}")], timeout=60, check=True)
    pred = np.load(tmp_path / "p.npy")   # a unicode array: no allow_pickle needed
    assert pred.dtype.kind == "U"
    np.testing.assert_array_equal(pred, want)
    with h5py.File(tmp_path / "p.h5", "r") as f:
        assert h5py.check_string_dtype(f["pred"].dtype).encoding == "utf-8"
        np.testing.assert_array_equal(f["pred"].asstr()[...].astype(str), want)
        assert f["classes"].asstr()[...].tolist() == model.classes_.tolist()
        np.testing.assert_array_equal(f["proba"][...], proba)
    # The same wine with one class named otherwise: its codes mean other names.
    other = _words_dataset("wine", tmp_path, ["nebbiolo", "grignolino", "barbera"])
    r = launch(2, ["eval", str(d["run"]), "--data", other["h5"]], timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "stand for the labels [barbera, grignolino, nebbiolo], but the model's for " \
           "[barbera, barolo, grignolino]" in r.stderr and r.stderr.count("mpisgd: error:") == 1

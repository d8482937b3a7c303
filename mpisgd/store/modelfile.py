"""model.h5 and oracle.h5: a trained model and everything needed to use it, as a file
anyone can read with h5py and NumPy. The layout is documented in docs/model-file.md.

Format version 2 (written now): the weights layer by layer with their real shapes
(``weights/W0`` (inputs, outputs), ``weights/b0`` (outputs,), ...: ``x @ W + b``), the
output function, the classes in the user's labels, the standardisation (``scaler/mean``,
``scaler/scale``), the feature count and names, the job; and ``theta``, the flat vector
training uses (layout in :mod:`mpisgd.models`), from which mpisgd itself predicts.
Version 1 files (``theta`` and the attributes only) still load: their classes are
0..C-1 and they have no standardisation. ``mpisgd solve`` writes its exact optimum in the
same layout as oracle.h5 (format ``mpisgd-oracle``), so eval and predict read it too.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mpisgd import __version__
from mpisgd.config import JobConfig, to_toml
from mpisgd.errors import DataError, MpisgdError
from mpisgd.models import ModelSpec, spec_n_params, spec_weights
from mpisgd.store.atomic import atomic_path

MODEL_FORMAT = "mpisgd-model"
ORACLE_FORMAT = "mpisgd-oracle"
FORMAT_VERSION = 2
NAME = "model.h5"
ORACLE = "oracle.h5"
# What the last layer's outputs go through, by the model's own task (a softmax model
# on binary data has two softmax outputs; logistic and the binary mlp one sigmoid).
OUTPUT = {"regression": "identity", "binary": "sigmoid", "multiclass": "softmax"}


@dataclass
class Model:
    """A trained model read from model.h5 (or oracle.h5).

    ``task`` and ``n_classes`` are the training data's. ``classes``: the original label
    of each class (int64 when every label is an integer, str when the labels were
    words, else float64), None for regression. ``scaling``: ``(mean, scale)`` of the
    standardisation training applied, or None; rows are standardised as
    ``(x - mean) / scale`` before the model.
    """

    path: str
    spec: ModelSpec
    theta: np.ndarray
    task: str
    n_classes: int
    classes: np.ndarray | None = None
    scaling: tuple[np.ndarray, np.ndarray] | None = None
    feature_names: tuple[str, ...] | None = None
    kind: str = MODEL_FORMAT
    format_version: int = FORMAT_VERSION


def layers(spec: ModelSpec, theta: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(W (inputs, outputs), b (outputs,))`` per layer, input layer first, as copies:
    a row block's next activations are ``h @ W + b`` (then the hidden activation, or the
    output function after the last layer)."""
    if spec.name == "mlp":
        return [(np.ascontiguousarray(W.T), b.copy()) for W, b in spec_weights(spec, theta)]
    W, b = spec_weights(spec, theta)
    if spec.name == "softmax":
        return [(np.ascontiguousarray(W.T), b.copy())]
    return [(W.reshape(-1, 1).copy(), b.reshape(1).copy())]


def label_array(values, n_classes: int) -> np.ndarray:
    """The classes' original labels: str (``<U``) for names, int64 when they are all
    integers, else float64; 0..C-1 when the data recorded none."""
    if values is None:
        return np.arange(n_classes, dtype=np.int64)
    values = np.asarray(values).reshape(-1)
    if values.dtype.kind in "SUO":
        return np.array([_text(v) for v in values.tolist()], dtype=str)
    values = values.astype(np.float64)
    if np.all(np.isfinite(values)) and np.all(values == np.round(values)) \
            and np.all(np.abs(values) < 2.0 ** 53):
        return values.astype(np.int64)
    return values


def utf8(texts: np.ndarray) -> np.ndarray:
    """Strings as HDF5 stores them: fixed-width UTF-8, as wide as the longest (so a
    million predictions are one plain array, not a million heap objects); h5py reads
    them back as str with ``dataset.asstr()[...]``."""
    encoded = np.char.encode(np.asarray(texts, dtype=str), "utf-8")
    return encoded.astype(h5py.string_dtype("utf-8", max(1, encoded.dtype.itemsize)))


def write_model(run: Path, theta: np.ndarray, spec: ModelSpec, task: str, cfg: JobConfig,
                *, classes=None, scaler=None, feature_names=None, train_data: str | None = None,
                name: str = NAME, kind: str = MODEL_FORMAT) -> Path:
    """Write ``run/name`` (model.h5) atomically. Rank 0 only.

    ``classes``: the training data's ``label_values`` (None: 0..C-1); ``scaler``: the
    standardisation applied to the training rows (anything with ``mean`` and ``scale``),
    or None; ``kind``: ``MODEL_FORMAT``, or ``ORACLE_FORMAT`` for ``mpisgd solve``.
    """
    path = run / name
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("theta", data=theta)
        group = f.create_group("weights")
        for i, (W, b) in enumerate(layers(spec, theta)):
            group.create_dataset(f"W{i}", data=W)
            group.create_dataset(f"b{i}", data=b)
        f.attrs.update(format=kind, format_version=FORMAT_VERSION, model=spec.name,
                       n_features=spec.n_features, n_classes=spec.n_classes, task=task,
                       n_layers=len(group) // 2, n_outputs=spec.n_outputs,
                       output=OUTPUT[spec.task], mpisgd_version=__version__,
                       config=to_toml(cfg))
        if spec.hidden:
            f.attrs.update(hidden=np.array(spec.hidden, dtype=np.int64),
                           activation=spec.activation)
        if task != "regression":
            labels = label_array(classes, spec.n_classes)
            f.create_dataset("classes", data=utf8(labels) if labels.dtype.kind == "U"
                             else labels)
        if scaler is not None:
            f.create_dataset("scaler/mean", data=np.asarray(scaler.mean, dtype=np.float64))
            f.create_dataset("scaler/scale", data=np.asarray(scaler.scale, dtype=np.float64))
        if feature_names is not None:
            f.attrs["feature_names"] = [str(n) for n in feature_names]
        if train_data is not None:
            f.attrs["train_data"] = str(train_data)
    return path


# ---------------------------------------------------------------------------------
# Reading.

def _text(value):
    """An HDF5 string attribute as str (h5py may return bytes); other values unchanged."""
    return value.decode() if isinstance(value, bytes) else value


def _not_a_model(path: str, why: str) -> DataError:
    return DataError(f"'{path}' is not an mpisgd model: {why}; expected the model.h5 that "
                     f"training writes into its run folder (or solve's oracle.h5).")


def _dataset(f: h5py.File, name: str) -> np.ndarray | None:
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        return None
    if h5py.check_string_dtype(obj.dtype) is not None:
        return np.array(obj.asstr()[...], dtype=str)
    return obj[...]


def _read(p: Path) -> tuple[dict, dict]:
    """(attributes, arrays) of the file; arrays absent from it are None."""
    try:
        with h5py.File(p, "r", locking=False) as f:
            attrs = dict(f.attrs)
            arrays = {k: _dataset(f, k) for k in ("theta", "classes", "scaler/mean",
                                                  "scaler/scale")}
    except OSError as exc:
        raise _not_a_model(str(p), f"not a readable HDF5 file ({exc})") from None
    return attrs, arrays


def _spec(attrs: dict, name: str, task: str) -> ModelSpec:
    n_features, n_classes = int(attrs["n_features"]), int(attrs["n_classes"])
    if name != "mlp":
        return ModelSpec(name, n_features, n_classes)
    if "hidden" in attrs:
        hidden, activation = attrs["hidden"], _text(attrs.get("activation", "relu"))
    else:   # files written before the attributes: the resolved job saved with it
        model_cfg = tomllib.loads(_text(attrs.get("config", "")))["model"]
        hidden, activation = model_cfg["hidden"], model_cfg["activation"]
    return ModelSpec("mlp", n_features, n_classes, tuple(int(h) for h in hidden),
                     activation, task)


def _model_path(path) -> Path:
    """The file a model argument names: the file itself, or a run folder's model.h5
    (else oracle.h5)."""
    p = Path(path)
    if p.is_dir():
        for name in (NAME, ORACLE):
            if (p / name).is_file():
                return p / name
        raise DataError(f"'{p}' is a folder without {NAME} or {ORACLE}; expected a model file "
                        f"or the run folder of a training run (which writes {NAME} unless "
                        "output.save_model = false) or of mpisgd solve (oracle.h5).")
    if not p.exists():
        raise DataError(f"model file '{p}' does not exist; expected the model.h5 of a run "
                        f"folder.")
    return p


def _legacy_oracle(attrs: dict, theta) -> dict:
    """oracle.h5 from before format version 2: a linear model's theta only."""
    if theta is None or theta.ndim != 1 or theta.size < 2:
        return attrs
    return {**attrs, "model": "linear", "task": "regression", "n_classes": 0,
            "n_features": theta.size - 1}


def _scaling(p: Path, arrays: dict, n_features: int):
    mean, scale = arrays["scaler/mean"], arrays["scaler/scale"]
    if mean is None and scale is None:
        return None
    ok = (mean is not None and scale is not None and mean.shape == scale.shape == (n_features,)
          and np.all(np.isfinite(mean)) and np.all(np.isfinite(scale)) and np.all(scale > 0))
    if not ok:
        raise _not_a_model(str(p), f"its scaler needs 'mean' and 'scale' of {n_features} finite "
                           "values each (scale > 0)")
    return mean.astype(np.float64), scale.astype(np.float64)


def _classes(p: Path, arrays: dict, task: str, n_classes: int):
    if task == "regression":
        return None
    classes = arrays["classes"]
    if classes is None:
        return label_array(None, n_classes)
    if classes.shape != (n_classes,) or classes.dtype.kind not in "iufU":
        raise _not_a_model(str(p), f"'classes' has shape {classes.shape} and dtype "
                           f"{classes.dtype}; expected {n_classes} numbers or strings")
    return label_array(classes, n_classes)


def load_model(path) -> Model:
    """Read and validate model.h5 or oracle.h5 (a run folder holding one is accepted
    too). Any rank, no MPI; raises DataError naming the file."""
    p = _model_path(path)
    attrs, arrays = _read(p)
    theta = arrays["theta"]
    kind = _text(attrs.get("format"))
    if kind not in (MODEL_FORMAT, ORACLE_FORMAT):
        raise _not_a_model(str(p), f"attribute format = {kind!r}, not '{MODEL_FORMAT}'")
    version = int(attrs.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise _not_a_model(str(p), f"format_version = {version}, written by a newer mpisgd; "
                           f"this one reads versions 1 to {FORMAT_VERSION}")
    if kind == ORACLE_FORMAT and "model" not in attrs:
        attrs = _legacy_oracle(attrs, theta)
    missing = [k for k in ("model", "n_features", "n_classes", "task") if k not in attrs]
    if missing or theta is None:
        raise _not_a_model(str(p), "missing " + ", ".join(missing or ["dataset 'theta'"]))
    name, task = str(_text(attrs["model"])), str(_text(attrs["task"]))
    try:
        spec = _spec(attrs, name, task)
    except (MpisgdError, ValueError, KeyError, TypeError) as exc:
        raise _not_a_model(str(p), f"its attributes do not describe a model ({exc})") from None
    size = spec_n_params(spec)
    if theta.ndim != 1 or theta.size != size or theta.dtype.kind != "f":
        raise _not_a_model(str(p), f"theta has shape {theta.shape} and dtype {theta.dtype}; "
                           f"a {name} model of {spec.n_features} features needs {size} floats")
    names = attrs.get("feature_names")
    return Model(path=str(p.resolve()), spec=spec, theta=theta, task=task,
                 n_classes=spec.n_classes, classes=_classes(p, arrays, task, spec.n_classes),
                 scaling=_scaling(p, arrays, spec.n_features),
                 feature_names=None if names is None else tuple(str(_text(n)) for n in names),
                 kind=kind, format_version=version)


def data_meta(info, scaler=None) -> dict:
    """:func:`write_model`'s keywords describing the training data: its classes' labels,
    feature names and path (from a DatasetInfo), and the standardisation."""
    return dict(classes=info.label_values, feature_names=info.feature_names,
                train_data=info.path, scaler=scaler)

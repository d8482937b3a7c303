"""model.h5: a trained model's parameters and everything needed to use them.

Written by training (rank 0, atomically), read by ``mpisgd eval`` / ``predict`` and by
anyone with h5py: dataset ``theta`` (the flat parameter vector, layout in
:mod:`mpisgd.models`) and attributes ``format = "mpisgd-model"``, ``model``, ``task``,
``n_features``, ``n_classes``, for the mlp ``hidden`` and ``activation``, and the
resolved job as TOML (``config``).
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
from mpisgd.models import ModelSpec, spec_n_params
from mpisgd.store.atomic import atomic_path

MODEL_FORMAT = "mpisgd-model"
NAME = "model.h5"


@dataclass
class Model:
    """A trained model read from model.h5: its spec, parameters and the task and class
    count of the data it was trained on."""

    path: str
    spec: ModelSpec
    theta: np.ndarray
    task: str
    n_classes: int


def write_model(run: Path, theta: np.ndarray, spec: ModelSpec, task: str,
                cfg: JobConfig) -> Path:
    """Write the final parameters to ``run/model.h5`` atomically. Rank 0 only."""
    path = run / NAME
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("theta", data=theta)
        f.attrs.update(format=MODEL_FORMAT, format_version=1, model=spec.name,
                       n_features=spec.n_features, n_classes=spec.n_classes, task=task,
                       mpisgd_version=__version__, config=to_toml(cfg))
        if spec.hidden:
            f.attrs.update(hidden=np.array(spec.hidden, dtype=np.int64),
                           activation=spec.activation)
    return path


def _text(value):
    """An HDF5 string attribute as str (h5py may return bytes); other values unchanged."""
    return value.decode() if isinstance(value, bytes) else value


def _not_a_model(path: str, why: str) -> DataError:
    return DataError(f"'{path}' is not an mpisgd model: {why}; expected the model.h5 that "
                     f"training writes into its run folder.")


def _read(p: Path) -> tuple[dict, np.ndarray | None]:
    try:
        with h5py.File(p, "r", locking=False) as f:
            attrs = dict(f.attrs)
            theta = f["theta"][...] if isinstance(f.get("theta"), h5py.Dataset) else None
    except OSError as exc:
        raise _not_a_model(str(p), f"not a readable HDF5 file ({exc})") from None
    return attrs, theta


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


def load_model(path: str) -> Model:
    """Read and validate model.h5 (a run folder holding one is accepted too). Any rank;
    raises DataError naming the file."""
    p = Path(path)
    if p.is_dir() and (p / NAME).is_file():
        p = p / NAME
    if not p.exists():
        raise DataError(f"model file '{p}' does not exist; expected the model.h5 of a run "
                        f"folder.")
    attrs, theta = _read(p)
    fmt = _text(attrs.get("format"))
    if fmt != MODEL_FORMAT:
        raise _not_a_model(str(p), f"attribute format = {fmt!r}, not '{MODEL_FORMAT}'")
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
    return Model(path=str(p.resolve()), spec=spec, theta=theta, task=task,
                 n_classes=spec.n_classes)

"""Prediction files for ``mpisgd predict``: HDF5, CSV or NumPy, by the --out extension.

Every format holds the predictions in the user's labels (the classes the training data
was converted from) or the regression values, row i for row i of the data. A sink is
created whole by rank 0 under a temporary name (:meth:`Sink.create`), then each rank in
turn opens it, writes its blocks of rows in order and closes it (``predict_file``).

- ``.h5`` / ``.hdf5``: ``pred`` (n,), ``proba`` (n,) P(y=1) for a one-output binary
  model or (n, C), ``classes`` (C,) the labels of proba's columns;
- ``.csv``: a header, then ``prediction`` and, for classifiers, one probability column
  per class named ``proba_<label>``;
- ``.npy``: the predictions (n,) only.

Class names (a model trained on word labels) are UTF-8 strings in HDF5 (fixed width,
``dataset.asstr()[...]`` reads them as str), text in CSV (quoted if they hold a comma
or a quote) and a unicode array (``<U``) in ``.npy``, which ``np.load`` reads without
``allow_pickle``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import h5py
import numpy as np

from mpisgd import __version__
from mpisgd.data import DatasetInfo
from mpisgd.data.format import label_text
from mpisgd.errors import OutputError
from mpisgd.predictor import TrainedModel
from mpisgd.store.modelfile import utf8

PRED_FORMAT = "mpisgd-predictions"


def _csv_field(text: str) -> str:
    """A CSV field as RFC 4180 writes it: quoted when it holds a comma, a quote or a
    line break (a class name may)."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


class Sink:
    """One prediction file being written: ``create`` (rank 0), then per rank in turn
    ``open``, ``write`` per block, ``close``."""

    def __init__(self, tm: TrainedModel, info: DatasetInfo, tmp: Path):
        self.tm, self.info, self.tmp = tm, info, tmp
        self.n = info.n_rows
        regression = tm.task == "regression"
        self.pred_dtype = info.dtype if regression else tm.classes_.dtype
        self.names = not regression and tm.classes_.dtype.kind == "U"


class H5Sink(Sink):
    def __init__(self, tm: TrainedModel, info: DatasetInfo, tmp: Path):
        super().__init__(tm, info, tmp)
        # Class names are written by index into their UTF-8 encodings.
        self.encoded = utf8(tm.classes_) if self.names else None

    def create(self, attrs: dict) -> None:
        n = self.n
        with h5py.File(self.tmp, "w", locking=False) as f:
            f.create_dataset("pred", shape=(n,), dtype=self.encoded.dtype if self.names
                             else self.pred_dtype)
            if self.tm.task != "regression":
                outputs = self.tm.spec.n_outputs
                f.create_dataset("proba", shape=(n,) if outputs == 1 else (n, outputs),
                                 dtype=self.info.dtype)
                f.create_dataset("classes", data=self.encoded if self.names
                                 else self.tm.classes_)
            f.attrs.update(format=PRED_FORMAT, format_version=2, **attrs)

    def open(self) -> None:
        self.f = h5py.File(self.tmp, "r+", locking=False)

    def write(self, first: int, out: np.ndarray) -> None:
        rows = slice(first, first + out.shape[0])
        self.f["pred"][rows] = self.encoded[self.tm.class_indices(out)] if self.names \
            else self.tm.labels(out)
        if self.tm.task != "regression":
            self.f["proba"][rows] = out

    def close(self) -> None:
        self.f.close()


class NpySink(Sink):
    def create(self, attrs: dict) -> None:
        np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.pred_dtype,
                                  shape=(self.n,)).flush()

    def open(self) -> None:
        self.a = np.load(self.tmp, mmap_mode="r+")

    def write(self, first: int, out: np.ndarray) -> None:
        self.a[first:first + out.shape[0]] = self.tm.labels(out)

    def close(self) -> None:
        self.a.flush()
        del self.a


class CsvSink(Sink):
    """Rows appended in order: the ranks write in rank order, each its rows in order."""

    def __init__(self, tm: TrainedModel, info: DatasetInfo, tmp: Path):
        super().__init__(tm, info, tmp)
        # Enough digits to read back the same float32 / float64.
        self.number = "%.9g" if info.dtype == np.float32 else "%.17g"
        classes = [] if tm.task == "regression" else [label_text(c) for c in tm.classes_]
        self.header = ",".join(["prediction"] + [_csv_field(f"proba_{c}") for c in classes])
        # A classifier's prediction is its class's label, written as the header's.
        self.labels = np.array([_csv_field(c) for c in classes], dtype=object)

    def create(self, attrs: dict) -> None:
        self.tmp.write_text(self.header + "\n", encoding="utf-8")

    def open(self) -> None:
        self.fh = open(self.tmp, "a", encoding="utf-8")

    def write(self, first: int, out: np.ndarray) -> None:
        if self.tm.task == "regression":
            np.savetxt(self.fh, out.reshape(-1, 1), fmt=self.number)
            return
        text = io.StringIO()
        np.savetxt(text, self.tm.probabilities(out), fmt=self.number, delimiter=",")
        labels = self.labels[self.tm.class_indices(out)]
        self.fh.writelines(f"{label},{line}\n" for label, line in
                           zip(labels, text.getvalue().splitlines()))

    def close(self) -> None:
        self.fh.close()


SINKS = {".h5": H5Sink, ".hdf5": H5Sink, ".csv": CsvSink, ".npy": NpySink}


def sink_class(out: str) -> type[Sink]:
    """The sink for ``--out``'s extension; an agreed OutputError for any other (every
    rank parsed the same argument)."""
    ext = os.path.splitext(out)[1].lower()
    if ext not in SINKS:
        raise OutputError(f"--out '{out}' has the extension {ext or '(none)'!r}; the format "
                          f"of the predictions follows it: one of {', '.join(SINKS)} "
                          "(HDF5, CSV, NumPy).", agreed=True)
    return SINKS[ext]


def pred_attrs(tm: TrainedModel, info: DatasetInfo) -> dict:
    """The attributes of an HDF5 prediction file: what made it."""
    return dict(model=tm.path, data=info.path, task=tm.task, n_classes=tm.model.n_classes,
                model_name=tm.model_name, n_rows=info.n_rows, mpisgd_version=__version__)

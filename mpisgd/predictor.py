"""A trained model in one process: ``mpisgd.load_model(path)`` and the prediction path
``mpisgd eval`` and ``mpisgd predict`` share with it.

Rows go through the model's standardisation (when training had one), then the same
Numba kernel training evaluates with, in the rows' dtype; class outputs become class
indices (P(y=1) >= 0.5, or the largest probability) and those the user's labels. Eval,
predict and :class:`TrainedModel` all call :meth:`TrainedModel.outputs`, so
``load_model(path).predict(X)`` equals what ``mpisgd predict`` writes for the same rows
of the same dtype, at any world size. No MPI here: this runs in a plain Python process.
"""

from __future__ import annotations

import numpy as np

from mpisgd import kernels
from mpisgd.data.scale import Scaler
from mpisgd.store.modelfile import Model, layers
from mpisgd.store.modelfile import load_model as read_model_file

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class TrainedModel:
    """A model read from model.h5 or oracle.h5, used like a fitted scikit-learn estimator.

    ``predict(X)``: labels in the user's classes (classification) or values
    (regression); ``predict_proba(X)``: (n, C) class probabilities, columns in the order
    of ``classes_`` (classifiers only); ``score(X, y)``: accuracy, or R^2 for regression.
    X is (n, n_features_in_) raw rows, as in the training data before any
    standardisation; float32 and float64 are used as they are, other dtypes become
    float64.
    """

    def __init__(self, model: Model):
        self.model = model
        self.path = model.path
        self.spec = model.spec
        self.task = model.task
        self.model_name = model.spec.name
        self.n_features_in_ = model.spec.n_features
        self.feature_names_in_ = model.feature_names
        self.classes_ = model.classes
        self.scaler = None if model.scaling is None else Scaler(*model.scaling)
        self._theta = {}   # theta cast to each dtype rows come in

    def __repr__(self) -> str:
        return (f"TrainedModel({self.model_name}, {self.task}, {self.n_features_in_} features"
                + (f", classes {self.classes_.tolist()}" if self.classes_ is not None else "")
                + (", standardised" if self.scaler is not None else "") + f", '{self.path}')")

    @property
    def weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(W (inputs, outputs), b)`` per layer: the model file's ``weights/W*, b*``."""
        return layers(self.spec, self.model.theta)

    # -- the path eval and predict share ------------------------------------------------
    def outputs(self, X: np.ndarray) -> np.ndarray:
        """The model's outputs for raw rows X (float32/float64, C-contiguous, (n, d)), in
        X's dtype: regression values (n,); P(y=1) (n,) for a one-output binary model;
        (n, C) class probabilities otherwise. X itself is left unchanged."""
        sparse = isinstance(X, kernels.sparse.CSR) if _is_csr(X) else False
        if self.scaler is not None and not sparse:
            X = self.scaler.transform(X)
        theta = self._theta.get(X.dtype)
        if theta is None:
            theta = self._theta[X.dtype] = self.model.theta.astype(X.dtype)
        if sparse:   # rows of a CSR dataset (a sparse model: linear, logistic, softmax)
            return kernels.sparse.predict(self.model_name, X, theta)
        return kernels.spec_predict(self.spec, X, theta)

    def class_indices(self, out: np.ndarray) -> np.ndarray:
        """Class indices 0..C-1 from outputs: P(y=1) >= 0.5 for (n,), argmax for (n, C)."""
        if out.ndim == 1:
            return (out >= 0.5).astype(np.int64)
        return np.argmax(out, axis=1).astype(np.int64)

    def labels(self, out: np.ndarray) -> np.ndarray:
        """Predictions from outputs: regression values as they are, else the labels."""
        if self.task == "regression":
            return out
        return self.classes_[self.class_indices(out)]

    def probabilities(self, out: np.ndarray) -> np.ndarray:
        """(n, C) class probabilities from outputs; a one-output model's P(y=1) becomes
        the columns 1 - p, p."""
        if out.ndim == 1:
            return np.column_stack([1.0 - out, out])
        return out

    # -- the scikit-learn side -----------------------------------------------------------
    def _rows(self, X):
        if hasattr(X, "tocsr") and hasattr(X, "indptr"):   # a scipy.sparse matrix or array
            if X.ndim != 2 or X.shape[1] != self.n_features_in_:
                raise ValueError(f"X must have {self.n_features_in_} features (the training "
                                 f"data's); got shape {X.shape}")
            if self.scaler is not None:
                raise ValueError("this model standardises its rows, which a sparse X cannot "
                                 "keep sparse; give a dense array")
            A = X.tocsr()
            if A.dtype not in _FLOATS:
                A = A.astype(np.float64)
            return kernels.sparse.CSR.from_scipy(A)
        X = np.asarray(X)
        if X.dtype not in _FLOATS:
            X = X.astype(np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must be a 2-D array of rows with {self.n_features_in_} "
                             f"features (the training data's columns); got shape {X.shape}")
        return np.ascontiguousarray(X)

    def predict(self, X) -> np.ndarray:
        """Predictions for the rows of X: labels (classification) or values (regression)."""
        return self.labels(self.outputs(self._rows(X)))

    @property
    def predict_proba(self):
        """(n, C) class probabilities, columns in the order of ``classes_``. Only for
        classifiers: a regression model has none (AttributeError, as scikit-learn's
        regressors, so ``hasattr(model, "predict_proba")`` tells)."""
        if self.task == "regression":
            raise AttributeError(f"'{self.model_name}' in '{self.path}' is a regression model: "
                                 "it predicts values, not class probabilities; use predict(X)")
        return lambda X: self.probabilities(self.outputs(self._rows(X)))

    def score(self, X, y) -> float:
        """scikit-learn's default score: accuracy for classifiers (y in the original
        labels: strings for a model whose classes are names), R^2 (coefficient of
        determination) for regression."""
        y = np.asarray(y).reshape(-1)
        pred = self.predict(X)
        if y.shape != pred.shape:
            raise ValueError(f"y must hold one value per row of X ({pred.shape[0]}); got "
                             f"shape {y.shape}")
        if self.task != "regression":
            return float(np.mean(pred == self._labels_like_classes(y)))
        y = y.astype(np.float64)
        residual = float(np.sum((y - pred) ** 2))
        total = float(np.sum((y - y.mean()) ** 2))
        if total == 0.0:   # scikit-learn's r2_score for a constant y
            return 1.0 if residual == 0.0 else 0.0
        return 1.0 - residual / total


    def _labels_like_classes(self, y: np.ndarray) -> np.ndarray:
        """y compared as the classes are: as str for class names (a list or object array
        of str, or UTF-8 bytes, too); a mix of names and numbers is refused, as
        scikit-learn does, since no label would ever be equal."""
        names = self.classes_.dtype.kind == "U"
        if y.dtype.kind == "S":
            y = np.char.decode(y, "utf-8")
        elif names and y.dtype.kind == "O":
            y = y.astype(str)
        if names != (y.dtype.kind == "U"):
            raise ValueError(f"y holds {'strings' if y.dtype.kind == 'U' else 'numbers'} "
                             f"({y.dtype}) but the classes of '{self.path}' are "
                             f"{'strings' if names else 'numbers'}: "
                             f"{self.classes_.tolist()}; give y in the training data's labels")
        return y


def load_model(path) -> TrainedModel:
    """The model in ``path`` (model.h5, oracle.h5, or a run folder holding one) as a
    :class:`TrainedModel`. One process, no MPI launcher; raises DataError naming the
    file."""
    return TrainedModel(read_model_file(path))


def _is_csr(X) -> bool:
    """Cheap test before touching kernels.sparse (loaded on first use)."""
    return type(X).__name__ == "CSR"

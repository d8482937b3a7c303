"""Datasets the launch tests train on: scikit-learn's bundled sets and hand-made bad files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from mpisgd.data import write_shard


def bundled_split(name: str, folder: Path) -> dict:
    """Standardised train/test shards of a bundled scikit-learn dataset (seeded split)."""
    X, y = (load_breast_cancer if name == "breast_cancer" else load_digits)(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    scaler = StandardScaler().fit(Xtr)
    Xtr, Xte = scaler.transform(Xtr), scaler.transform(Xte)
    n_classes = int(y.max()) + 1
    task = "binary" if n_classes == 2 else "multiclass"
    folder.mkdir(parents=True, exist_ok=True)
    write_shard(str(folder / "train.h5"), Xtr, ytr.astype(np.int64), task, n_classes)
    write_shard(str(folder / "test.h5"), Xte, yte.astype(np.int64), task, n_classes)
    return {"train": str(folder / "train.h5"), "test": str(folder / "test.h5"),
            "Xtr": Xtr, "ytr": ytr, "Xte": Xte, "yte": yte, "n_classes": n_classes}


def sets(*overrides: str) -> list[str]:
    """``--set`` arguments, one per override."""
    return [word for o in overrides for word in ("--set", o)]


def bundled_job(d: dict, job: str, *overrides: str) -> list[str]:
    """Arguments training ``job`` on a split from :func:`bundled_split`, plus overrides."""
    return [job, *sets(f"data.train='{d['train']}'", f"data.test='{d['test']}'", *overrides)]


def raw_shard(path: Path, X, y, *, task="regression", n_classes=0, n_rows=None,
              x_name="X", y_name="y") -> str:
    """A shard written with h5py directly, bypassing the writers' checks (for bad files)."""
    with h5py.File(path, "w") as f:
        f.create_dataset(x_name, data=X)
        f.create_dataset(y_name, data=y)
        f.attrs.update(format="mpisgd", format_version=1, task=task,
                       n_features=int(np.shape(X)[1]) if np.ndim(X) == 2 else 0,
                       n_classes=n_classes, n_rows=len(X) if n_rows is None else n_rows)
    return str(path)

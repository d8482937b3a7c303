"""The mpisgd HDF5 shard format: its rules, ``DatasetInfo`` and ``open_dataset``.

A dataset is one shard file, a folder of ``*.h5`` shards whose sorted file names give
the global row order, or a manifest listing shards (:mod:`mpisgd.data.manifest`); its
shards are dense (``X``) or CSR (:mod:`mpisgd.data.csr`). The layout is documented in
``docs/data-format.md``. This module opens a dataset and
validates its metadata; reading rows is :mod:`mpisgd.data.read`, checking values
:mod:`mpisgd.data.checks` and writing shards :mod:`mpisgd.data.write`.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import numbers
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from mpisgd.data.csr import LAYOUTS, csr_meta, index_dtype
from mpisgd.data.manifest import MANIFEST_SUFFIXES, read_manifest
from mpisgd.errors import DataError
from mpisgd.models import TASKS
from mpisgd.runtime.launch_env import launcher_rank

FORMAT_NAME = "mpisgd"
# The newest version this reads and writes. Version 2 only adds label_values that are
# strings (class names), version 3 the CSR layout; a shard is written with the lowest
# version that holds it (``shard_version``), so that an older mpisgd refuses a file it
# would misread by its version, and reads every other file as before.
FORMAT_VERSION = 3
DTYPES = ("float32", "float64")
# Inputs ``mpisgd data convert`` reads, by file name ending: a user who gives one where a
# dataset belongs is told to convert it (compressed text: the ending before .gz etc.).
CONVERTIBLE = {".csv": "CSV", ".tsv": "CSV", ".txt": "text", ".npz": "NumPy .npz",
               ".svm": "LIBSVM", ".libsvm": "LIBSVM", ".svmlight": "LIBSVM"}
_COMPRESSED = (".gz", ".bz2", ".xz")


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a dataset; ``offsets[i]`` is the first global row of shard i.

    ``offsets`` has one entry per shard plus a final ``n_rows``, so shard i holds
    global rows ``[offsets[i], offsets[i+1])``.
    """

    path: str
    shards: tuple[str, ...]
    rows: tuple[int, ...]
    n_rows: int
    n_features: int
    task: str
    n_classes: int
    dtype: np.dtype
    true_w: np.ndarray | None = field(default=None, compare=False, repr=False)
    true_b: float | np.ndarray | None = field(default=None, compare=False, repr=False)
    label_values: np.ndarray | None = field(default=None, compare=False, repr=False)
    feature_names: tuple[str, ...] | None = field(default=None, compare=False, repr=False)
    # From a manifest: the node index storing each shard (None: shared storage).
    nodes: tuple[int | None, ...] | None = field(default=None, compare=False, repr=False)
    # "dense" (X) or "csr" (indptr, indices, values); the non-zeros of a CSR dataset,
    # in all and per shard (None for dense data).
    layout: str = "dense"
    nnz: int | None = None
    shard_nnz: tuple[int, ...] | None = field(default=None, compare=False, repr=False)
    offsets: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if len(self.rows) != len(self.shards) or sum(self.rows) != self.n_rows:
            raise DataError(f"inconsistent DatasetInfo for '{self.path}': {len(self.shards)} "
                            f"shards, rows {self.rows}, n_rows={self.n_rows}")
        object.__setattr__(self, "offsets", (0, *itertools.accumulate(self.rows)))

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    @property
    def index_dtype(self) -> np.dtype:
        """The dtype of CSR ``indices`` as read: uint32 when every feature id fits."""
        return index_dtype(self.n_features)

    @property
    def y_dtype(self) -> np.dtype:
        """The dtype ``read_rows`` returns for y: X's dtype for regression, else int64."""
        return self.dtype if self.task == "regression" else np.dtype(np.int64)

    def locate(self, row: int) -> tuple[int, int]:
        """(shard index, row within that shard) of global ``row``."""
        if not 0 <= row < self.n_rows:
            raise DataError(f"row {row} is outside dataset '{self.path}' with {self.n_rows} rows")
        shard = bisect.bisect_right(self.offsets, row) - 1
        return shard, row - self.offsets[shard]


# ---------------------------------------------------------------------------------
# The rules a shard's metadata follows, shared by opening and writing.

def check_task(task, n_classes, where: str) -> None:
    """Raise DataError unless ``task`` is known and ``n_classes`` fits it."""
    if task not in TASKS:
        raise DataError(f"{where}: task must be one of {', '.join(TASKS)}; found {task!r}")
    if task == "regression" and n_classes != 0:
        raise DataError(f"{where}: n_classes must be 0 for task 'regression'; found {n_classes}")
    if task == "binary" and n_classes != 2:
        raise DataError(f"{where}: n_classes must be 2 for task 'binary'; found {n_classes}")
    if task == "multiclass" and n_classes < 2:
        raise DataError(f"{where}: n_classes must be at least 2 for task 'multiclass'; "
                        f"found {n_classes}")


def check_truth(true_w, true_b, n_features, task, n_classes, where: str):
    """Validate the optional generator truth; returns it as arrays/float."""
    multi = task == "multiclass"
    if true_w is not None:
        true_w = np.asarray(true_w, dtype=np.float64)
        want = (n_features, n_classes) if multi else (n_features,)
        if true_w.shape != want:
            raise DataError(f"{where}: true_w must have shape {want}; found {true_w.shape}")
    if true_b is not None:
        b = np.asarray(true_b, dtype=np.float64)
        if multi and b.shape != (n_classes,):
            raise DataError(f"{where}: true_b must have shape ({n_classes},) for multiclass; "
                            f"found {b.shape}")
        if not multi and b.size != 1:
            raise DataError(f"{where}: true_b must be a single number; found shape {b.shape}")
        true_b = b if multi else float(b.reshape(()))
    return true_w, true_b


def label_values_array(values) -> np.ndarray:
    """``label_values`` as an array: str (``<U``) class names when they are strings
    (bytes are UTF-8), else float64 numbers."""
    a = np.asarray(values).reshape(-1)
    items = a.tolist()
    if a.dtype.kind in "SU" or (a.dtype.kind == "O" and
                                any(isinstance(v, (str, bytes)) for v in items)):
        return np.array([_text(v) for v in items], dtype=str)
    return a.astype(np.float64)


def shard_version(label_values, layout: str = "dense") -> int:
    """The format version of a shard with these ``label_values`` and this layout (see
    FORMAT_VERSION)."""
    if layout == "csr":
        return 3
    return 2 if label_values is not None and label_values.dtype.kind == "U" else 1


def same_labels(a, b) -> bool:
    """Whether two ``label_values`` (None: not recorded) give the classes the same labels."""
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    if (a.dtype.kind == "U") != (b.dtype.kind == "U") or a.shape != b.shape:
        return False
    return bool(np.all(a == b)) if a.dtype.kind == "U" else \
        np.array_equal(a.astype(np.float64), b.astype(np.float64))


def label_text(v) -> str:
    """A class label for messages and file headers: a name as it is, an integral number
    without ``.0``, any other number in full (``repr``)."""
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, (str, bytes)):
        return _text(v)
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def float_dtype(dtype, where: str) -> np.dtype:
    """``dtype`` as a numpy dtype; DataError unless it is one of ``DTYPES``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise DataError(f"{where}: dtype must be float32 or float64; found {dtype!r}")
    return dt


# ---------------------------------------------------------------------------------
# Opening: metadata only.

def open_shard(path: str) -> h5py.File:
    """Open one shard file for reading."""
    _hidden_here(path)
    # No HDF5 file locking: shards are published by atomic rename, so a reader never
    # sees a file being written, and locks fail on some parallel file systems.
    return h5py.File(path, "r", locking=False)


def _hidden_here(path: str) -> None:
    """Test hook ``MPISGD_TEST_HIDE=<rank>:<fragment>``: on that rank, files whose path
    contains the fragment do not exist, as on a node whose local copy is missing (one
    machine cannot give one rank a different file system)."""
    spec = os.environ.get("MPISGD_TEST_HIDE", "")
    if not spec:
        return
    rank, fragment = spec.split(":", 1)
    if fragment in str(path) and (launcher_rank() or "0") == rank:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))


def _list_shards(path: str) -> list[str]:
    if not os.path.exists(path):
        raise DataError(f"data file '{path}' does not exist")
    if not os.path.isdir(path):
        return [path]
    try:
        names = sorted(n for n in os.listdir(path)
                       if n.endswith(".h5") and not n.startswith("."))
    except OSError as e:
        raise DataError(f"cannot list data folder '{path}': {e.strerror or e}") from e
    shards = [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
    if not shards:
        inputs = sorted(n for n in os.listdir(path) if _input_kind(n))
        hint = (f" It holds {', '.join(inputs[:3])}{', ...' if len(inputs) > 3 else ''}: "
                f"convert it first: `mpisgd data convert "
                f"{os.path.join(path, inputs[0])} {_converted_name(inputs[0], path)}`"
                if inputs else "")
        raise DataError(f"data folder '{path}' contains no shard files; expected one or "
                        f"more '*.h5' files.{hint}")
    return shards


def _input_kind(name: str) -> str | None:
    """'CSV', 'LIBSVM', ...: what ``mpisgd data convert`` reads, from a file name."""
    name = name.lower()
    for ext in _COMPRESSED:
        name = name.removesuffix(ext)
    return CONVERTIBLE.get(os.path.splitext(name)[1])


def _converted_name(name: str, folder: str = "") -> str:
    stem = os.path.basename(name)
    for ext in _COMPRESSED:
        stem = stem.removesuffix(ext)
    return os.path.join(folder or os.path.dirname(name), os.path.splitext(stem)[0] + ".h5")


def convert_hint(path: str) -> str | None:
    """For a file that is no HDF5 at all but an input ``data convert`` reads (by its name,
    or any text not named as HDF5): the message that says to convert it first. None
    otherwise (a damaged shard is not to be converted)."""
    if h5py.is_hdf5(path) or path.lower().endswith((".h5", ".hdf5")):
        return None
    kind = _input_kind(path)
    if kind is None:
        try:
            with open(path, "rb") as fh:
                head = fh.read(4096)
            head.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None   # binary and not HDF5: a damaged file, not an input
        kind = "text"
    return (f"'{path}' is a {kind} file, not an mpisgd dataset (HDF5 shards); convert it "
            f"first: `mpisgd data convert {path} {_converted_name(path)}` and give "
            f"'{_converted_name(path)}' instead")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _labels(values) -> str:
    return "none recorded" if values is None else \
        "[" + ", ".join(label_text(v) for v in values) + "]"


def _attr(f: h5py.File, path: str, name: str, expected: str):
    if name not in f.attrs:
        raise DataError(f"'{path}' has no attribute '{name}'; expected {expected} "
                        "(is this an mpisgd shard?)")
    return f.attrs[name]


def _int_attr(f: h5py.File, path: str, name: str) -> int:
    value = _attr(f, path, name, "an integer")
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise DataError(f"attribute '{name}' of '{path}' must be an integer; found {value!r}")
    return int(value)


def _dataset(f: h5py.File, path: str, name: str) -> h5py.Dataset:
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        found = ", ".join(repr(k) for k in f.keys()) or "nothing"
        raise DataError(f"'{path}' has no dataset '{name}'; expected datasets 'X' "
                        f"(rows x features) and 'y' (rows); found {found}")
    return obj


def _read_shard_meta(path: str) -> dict:
    if not os.access(path, os.R_OK):
        raise DataError(f"data file '{path}' is not readable (permission denied); expected "
                        "read permission for this user")
    try:
        with open_shard(path) as f:
            return _meta_from_file(f, path)
    except OSError as e:
        hint = convert_hint(path)
        if hint:
            raise DataError(hint) from None
        raise DataError(f"data file '{path}' is not a readable HDF5 file (truncated or "
                        f"corrupt?): {e}") from e


def _meta_from_file(f: h5py.File, path: str) -> dict:
    fmt = _text(_attr(f, path, "format", f"format='{FORMAT_NAME}'"))
    if fmt != FORMAT_NAME:
        raise DataError(f"'{path}' has format='{fmt}'; expected format='{FORMAT_NAME}'")
    version = _int_attr(f, path, "format_version")
    if not 1 <= version <= FORMAT_VERSION:
        raise DataError(f"'{path}' has format_version={version}; this mpisgd reads "
                        f"format_version 1 to {FORMAT_VERSION}")
    task = _text(_attr(f, path, "task", "one of " + ", ".join(TASKS)))
    n_features = _int_attr(f, path, "n_features")
    n_classes = _int_attr(f, path, "n_classes")
    n_rows = _int_attr(f, path, "n_rows")
    check_task(task, n_classes, f"'{path}'")
    if n_features < 1:
        raise DataError(f"'{path}' has n_features={n_features}; expected at least 1")
    layout = _text(f.attrs.get("layout", "dense"))
    if layout not in LAYOUTS:
        raise DataError(f"'{path}' has layout='{layout}'; expected one of {', '.join(LAYOUTS)}")
    if layout == "csr":
        y = _dataset(f, path, "y")
        _check_y(y, path, task, n_rows)
        arrays = csr_meta(f, path, n_rows, n_features)
    else:
        X, y = _dataset(f, path, "X"), _dataset(f, path, "y")
        _check_arrays(X, y, path, task, n_features, n_rows)
        arrays = dict(nnz=None, dtype=np.dtype(X.dtype.name))
    return dict(path=path, n_rows=n_rows, n_features=n_features, task=task,
                n_classes=n_classes, layout=layout, **arrays,
                **_optional_meta(f, path, task, n_features, n_classes))


def _check_arrays(X: h5py.Dataset, y: h5py.Dataset, path: str, task: str, n_features: int,
                  n_rows: int) -> None:
    """Shapes and dtypes of X and y against each other and the attributes."""
    if X.ndim != 2:
        raise DataError(f"X in '{path}' must be 2-D (rows x features); found shape {X.shape}")
    if X.dtype.kind != "f" or X.dtype.itemsize not in (4, 8):
        raise DataError(f"X in '{path}' has dtype {X.dtype}; expected float32 or float64")
    if y.ndim != 1:
        raise DataError(f"y in '{path}' must be 1-D (one value per row); found shape {y.shape}")
    if y.shape[0] != X.shape[0]:
        raise DataError(f"shape mismatch: X has {X.shape[0]} rows but y has {y.shape[0]} "
                        f"in '{path}'")
    if X.shape[1] != n_features:
        raise DataError(f"'{path}' has attribute n_features={n_features} but X has "
                        f"{X.shape[1]} columns")
    if n_rows != X.shape[0]:
        raise DataError(f"'{path}' has attribute n_rows={n_rows} but X has {X.shape[0]} rows")
    _check_y(y, path, task, n_rows)


def _check_y(y: h5py.Dataset, path: str, task: str, n_rows: int) -> None:
    if y.ndim != 1 or y.shape[0] != n_rows:
        raise DataError(f"y in '{path}' must be 1-D with one value per row ({n_rows}); "
                        f"found shape {y.shape}")
    if task == "regression" and y.dtype.kind != "f":
        raise DataError(f"y in '{path}' has dtype {y.dtype}; expected a float dtype for "
                        "task 'regression'")
    if task != "regression" and y.dtype.kind not in "iu":
        raise DataError(f"y in '{path}' has dtype {y.dtype}; expected integer labels "
                        f"(int64) for task '{task}'")


def _optional_meta(f: h5py.File, path: str, task: str, n_features: int,
                   n_classes: int) -> dict:
    """true_w, true_b, label_values and feature_names (each None when absent), checked."""
    tw = f.get("true_w")
    true_w = tw[()] if isinstance(tw, h5py.Dataset) else None
    true_w, true_b = check_truth(true_w, f.attrs.get("true_b"), n_features, task, n_classes,
                                 f"'{path}'")
    label_values = f.attrs.get("label_values")
    if label_values is not None:
        label_values = label_values_array(label_values)
        if task == "regression" or label_values.shape != (n_classes,):
            raise DataError(f"'{path}' has attribute label_values of length "
                            f"{label_values.size}; expected one value per class "
                            f"({n_classes}) and only for classification")
    names = f.attrs.get("feature_names")
    if names is not None:
        names = tuple(_text(n) for n in np.asarray(names).reshape(-1))
        if len(names) != n_features:
            raise DataError(f"'{path}' has {len(names)} feature_names; expected {n_features}")
    return dict(true_w=true_w, true_b=true_b, label_values=label_values, feature_names=names)


def open_dataset(path) -> DatasetInfo:
    """Read and validate the metadata of a shard file or folder; never reads X or y.

    Raises DataError naming the file for anything that does not follow the format.
    """
    path = os.fspath(path)
    listed = read_manifest(path) if path.endswith(MANIFEST_SUFFIXES) else None
    files = [e["path"] for e in listed] if listed else _list_shards(path)
    metas = [_read_shard_meta(p) for p in files]
    for m, e in zip(metas, listed or []):
        if e["rows"] is not None and e["rows"] != m["n_rows"]:
            raise DataError(f"manifest '{path}' says '{m['path']}' has {e['rows']} rows, but "
                            f"the file holds {m['n_rows']}")
    first = metas[0]
    for m in metas[1:]:
        for key in ("layout", "task", "n_features", "n_classes", "dtype"):
            if m[key] != first[key]:
                raise DataError(
                    f"shards of '{path}' disagree: '{m['path']}' has {key}={m[key]} but "
                    f"'{first['path']}' has {key}={first[key]}; all shards must agree on "
                    "layout, task, n_features, n_classes and dtype")
        if not same_labels(m["label_values"], first["label_values"]):
            # The codes 0..C-1 would stand for different labels in different shards.
            raise DataError(
                f"shards of '{path}' disagree: the classes of '{m['path']}' stand for the "
                f"labels {_labels(m['label_values'])} but those of '{first['path']}' for "
                f"{_labels(first['label_values'])}; convert the data in one go so that "
                "every shard maps the labels to the same classes")
    n_rows = sum(m["n_rows"] for m in metas)
    if n_rows == 0:
        raise DataError(f"dataset '{path}' is empty: its shards hold 0 rows")
    return DatasetInfo(
        path=path, shards=tuple(m["path"] for m in metas),
        rows=tuple(m["n_rows"] for m in metas), n_rows=n_rows,
        n_features=first["n_features"], task=first["task"], n_classes=first["n_classes"],
        dtype=first["dtype"], true_w=first["true_w"], true_b=first["true_b"],
        label_values=first["label_values"], feature_names=first["feature_names"],
        nodes=tuple(e["node"] for e in listed) if listed else None, layout=first["layout"],
        nnz=None if first["nnz"] is None else sum(m["nnz"] for m in metas),
        shard_nnz=None if first["nnz"] is None else tuple(m["nnz"] for m in metas))

"""The mpisgd HDF5 shard format: open (metadata only), read row ranges, check, write.

A dataset is one shard file or a folder of ``*.h5`` shards whose sorted file names
give the global row order. The layout is documented in ``docs/data-format.md``.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import itertools
import numbers
import os
import shutil
from dataclasses import dataclass, field
from typing import Iterator

import h5py
import numpy as np

from mpisgd.errors import DataError, OutputError

FORMAT_NAME = "mpisgd"
FORMAT_VERSION = 1
TASKS = ("regression", "binary", "multiclass")
DTYPES = ("float32", "float64")

# Row chunks of about this many bytes: large enough that a contiguous slice is a few
# big reads, small enough that reading a handful of rows does not pull megabytes.
CHUNK_BYTES = 1 << 20
# Blocks handed out by iter_blocks: bounded memory whatever the file size.
BLOCK_BYTES = 32 << 20

_tmp_counter = itertools.count()


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
# Opening: metadata only.

def _open_read(path: str) -> h5py.File:
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
    if fragment in str(path) and os.environ.get("PMI_RANK", "0") == rank:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))


MANIFEST_SUFFIXES = (".toml", ".json")


def read_manifest(path: str) -> list[dict]:
    """The shards a manifest lists: ``[{"path", "rows" (or None), "node" (or None)}]``.

    A manifest (TOML or JSON) holds ``shard = [{path = "...", rows = N, node = K}, ...]``;
    relative paths are relative to the manifest, ``rows`` (checked against the file) and
    ``node`` (the index of the node whose local disk holds the shard) are optional.
    """
    import json
    import tomllib

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f) if path.endswith(".toml") else json.load(f)
    except OSError as e:
        raise DataError(f"cannot read manifest '{path}': {e.strerror or e}") from e
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise DataError(f"manifest '{path}' is not valid {path.rsplit('.', 1)[1].upper()}: "
                        f"{e}") from e
    entries = doc.get("shard") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"manifest '{path}' must list its shards as a non-empty 'shard' "
                        f"array of tables with a 'path' each")
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for i, e in enumerate(entries):
        extra = set(e) - {"path", "rows", "node"} if isinstance(e, dict) else set()
        if not isinstance(e, dict) or not isinstance(e.get("path"), str) or extra:
            raise DataError(f"manifest '{path}': shard {i} must be a table with a string "
                            f"'path' and optional integer 'rows' and 'node'"
                            + (f"; unknown keys {sorted(extra)}" if extra else ""))
        for key in ("rows", "node"):
            v = e.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise DataError(f"manifest '{path}': shard {i} has {key} = {v!r}; "
                                f"expected an integer >= 0")
        out.append({"path": os.path.join(base, e["path"]), "rows": e.get("rows"),
                    "node": e.get("node")})
    return out


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
        raise DataError(f"data folder '{path}' contains no shard files; expected one or "
                        "more '*.h5' files")
    return shards


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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


def _check_task(task, n_classes, where: str) -> None:
    if task not in TASKS:
        raise DataError(f"{where}: task must be one of {', '.join(TASKS)}; found {task!r}")
    if task == "regression" and n_classes != 0:
        raise DataError(f"{where}: n_classes must be 0 for task 'regression'; found {n_classes}")
    if task == "binary" and n_classes != 2:
        raise DataError(f"{where}: n_classes must be 2 for task 'binary'; found {n_classes}")
    if task == "multiclass" and n_classes < 2:
        raise DataError(f"{where}: n_classes must be at least 2 for task 'multiclass'; "
                        f"found {n_classes}")


def _check_truth(true_w, true_b, n_features, task, n_classes, where: str):
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


def _read_shard_meta(path: str) -> dict:
    if not os.access(path, os.R_OK):
        raise DataError(f"data file '{path}' is not readable (permission denied); expected "
                        "read permission for this user")
    try:
        with _open_read(path) as f:
            return _meta_from_file(f, path)
    except OSError as e:
        raise DataError(f"data file '{path}' is not a readable HDF5 file (truncated or "
                        f"corrupt?): {e}") from e


def _meta_from_file(f: h5py.File, path: str) -> dict:
    fmt = _text(_attr(f, path, "format", f"format='{FORMAT_NAME}'"))
    if fmt != FORMAT_NAME:
        raise DataError(f"'{path}' has format='{fmt}'; expected format='{FORMAT_NAME}'")
    version = _int_attr(f, path, "format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"'{path}' has format_version={version}; this mpisgd reads "
                        f"format_version={FORMAT_VERSION}")
    task = _text(_attr(f, path, "task", "one of " + ", ".join(TASKS)))
    n_features = _int_attr(f, path, "n_features")
    n_classes = _int_attr(f, path, "n_classes")
    n_rows = _int_attr(f, path, "n_rows")
    _check_task(task, n_classes, f"'{path}'")
    if n_features < 1:
        raise DataError(f"'{path}' has n_features={n_features}; expected at least 1")
    X, y = _dataset(f, path, "X"), _dataset(f, path, "y")
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
    if task == "regression" and y.dtype.kind != "f":
        raise DataError(f"y in '{path}' has dtype {y.dtype}; expected a float dtype for "
                        "task 'regression'")
    if task != "regression" and y.dtype.kind not in "iu":
        raise DataError(f"y in '{path}' has dtype {y.dtype}; expected integer labels "
                        f"(int64) for task '{task}'")
    tw = f.get("true_w")
    true_w = tw[()] if isinstance(tw, h5py.Dataset) else None
    true_w, true_b = _check_truth(true_w, f.attrs.get("true_b"), n_features, task, n_classes,
                                  f"'{path}'")
    label_values = f.attrs.get("label_values")
    if label_values is not None:
        label_values = np.asarray(label_values, dtype=np.float64).reshape(-1)
        if task == "regression" or label_values.shape != (n_classes,):
            raise DataError(f"'{path}' has attribute label_values of length "
                            f"{label_values.size}; expected one value per class "
                            f"({n_classes}) and only for classification")
    names = f.attrs.get("feature_names")
    if names is not None:
        names = tuple(_text(n) for n in np.asarray(names).reshape(-1))
        if len(names) != n_features:
            raise DataError(f"'{path}' has {len(names)} feature_names; expected {n_features}")
    return dict(path=path, n_rows=n_rows, n_features=n_features, task=task,
                n_classes=n_classes, dtype=np.dtype(X.dtype.name), true_w=true_w,
                true_b=true_b, label_values=label_values, feature_names=names)


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
        for key in ("task", "n_features", "n_classes", "dtype"):
            if m[key] != first[key]:
                raise DataError(
                    f"shards of '{path}' disagree: '{m['path']}' has {key}={m[key]} but "
                    f"'{first['path']}' has {key}={first[key]}; all shards must agree on "
                    "task, n_features, n_classes and dtype")
    n_rows = sum(m["n_rows"] for m in metas)
    if n_rows == 0:
        raise DataError(f"dataset '{path}' is empty: its shards hold 0 rows")
    return DatasetInfo(
        path=path, shards=tuple(m["path"] for m in metas),
        rows=tuple(m["n_rows"] for m in metas), n_rows=n_rows,
        n_features=first["n_features"], task=first["task"], n_classes=first["n_classes"],
        dtype=first["dtype"], true_w=first["true_w"], true_b=first["true_b"],
        label_values=first["label_values"], feature_names=first["feature_names"],
        nodes=tuple(e["node"] for e in listed) if listed else None)


# ---------------------------------------------------------------------------------
# Reading row ranges.

def _check_range(info: DatasetInfo, start, stop) -> tuple[int, int]:
    if not (isinstance(start, numbers.Integral) and isinstance(stop, numbers.Integral)):
        raise DataError(f"row range must be integers; got [{start!r}, {stop!r})")
    start, stop = int(start), int(stop)
    if not 0 <= start <= stop <= info.n_rows:
        raise DataError(f"row range [{start}, {stop}) is outside dataset '{info.path}' "
                        f"with {info.n_rows} rows")
    return start, stop


def _pieces(info: DatasetInfo, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
    """(shard, local start, local stop) of each shard the global range [start, stop) touches."""
    shard = bisect.bisect_right(info.offsets, start) - 1
    pos = start
    while pos < stop:
        end = min(stop, info.offsets[shard + 1])
        if end > pos:
            yield shard, pos - info.offsets[shard], end - info.offsets[shard]
        pos = end
        shard += 1


class DatasetReader:
    """Reads global row ranges, keeping the shard files open between reads.

    Use it (not ``read_rows``) when reading many ranges: opening an HDF5 file costs far
    more than reading a few rows. A context manager; one reader per thread.
    """

    def __init__(self, info: DatasetInfo):
        self.info = info
        self._files: dict[int, h5py.File] = {}

    def _file(self, shard: int) -> h5py.File:
        f = self._files.get(shard)
        if f is not None:
            return f
        path = self.info.shards[shard]
        try:
            f = _open_read(path)
            shape = f["X"].shape
        except (OSError, KeyError) as e:
            raise DataError(f"cannot read data file '{path}': {e}") from e
        want = (self.info.rows[shard], self.info.n_features)
        if shape != want:
            f.close()
            raise DataError(f"data file '{path}' changed since the dataset was opened: X has "
                            f"shape {shape}, expected {want}")
        self._files[shard] = f
        return f

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) as C-contiguous (X, y), read as one slice per shard."""
        info = self.info
        start, stop = _check_range(info, start, stop)
        X = np.empty((stop - start, info.n_features), dtype=info.dtype)
        y = np.empty(stop - start, dtype=info.y_dtype)
        out = 0
        for shard, a, b in _pieces(info, start, stop):
            f = self._file(shard)
            dest = np.s_[out:out + b - a]
            try:
                # read_direct reads the hyperslab straight into the result: no
                # temporary per shard and no concatenation.
                f["X"].read_direct(X, np.s_[a:b], dest)
                f["y"].read_direct(y, np.s_[a:b], dest)
            except OSError as e:
                raise DataError(f"cannot read rows [{a}, {b}) of data file "
                                f"'{info.shards[shard]}': {e}") from e
            out += b - a
        return X, y

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_rows(info: DatasetInfo, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Global rows [start, stop) as C-contiguous (X, y); may span shards.

    X has the dataset dtype; y is X's dtype for regression and int64 otherwise. Opens
    and closes the shards it needs: for many reads use ``DatasetReader``.
    """
    with DatasetReader(info) as reader:
        return reader.read(start, stop)


def default_block_rows(n_features: int, itemsize: int = 8, nbytes: int = BLOCK_BYTES) -> int:
    """Rows per block so that one block of X takes about ``nbytes``."""
    return max(1, nbytes // (max(1, n_features) * itemsize))


def iter_blocks(info: DatasetInfo, start: int = 0, stop: int | None = None,
                block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(first_row, X, y)`` blocks covering [start, stop), bounded in memory."""
    stop = info.n_rows if stop is None else stop
    start, stop = _check_range(info, start, stop)
    step = block_rows or default_block_rows(info.n_features, info.dtype.itemsize)
    with DatasetReader(info) as reader:
        for a in range(start, stop, step):
            b = min(stop, a + step)
            X, y = reader.read(a, b)
            yield a, X, y


def iter_selected(info: DatasetInfo, lo: int, rows: np.ndarray,
                  block_rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]]:
    """Yield ``(X, y, pick)`` blocks covering global rows ``lo + rows`` (``rows``
    ascending): ``X[pick]``, ``y[pick]`` are the selected rows of the block. Memory holds
    one block; blocks without a selected row are not read."""
    if rows.size == 0:
        return
    step = block_rows or default_block_rows(info.n_features, info.dtype.itemsize)
    end = int(rows[-1]) + 1
    with DatasetReader(info) as reader:
        for a in range(int(rows[0]), end, step):
            b = min(a + step, end)
            pick = rows[np.searchsorted(rows, a):np.searchsorted(rows, b)] - a
            if pick.size:
                X, y = reader.read(lo + a, lo + b)
                yield X, y, pick


# ---------------------------------------------------------------------------------
# Value checks.

def _fmt(v) -> str:
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _check_finite(a: np.ndarray, name: str, where: str, first_row: int) -> None:
    if a.size == 0:
        return
    # A sum is NaN/Inf if any element is, and costs no temporary array; only when it
    # is not finite (or overflowed) do we pay for the element-wise search.
    with np.errstate(all="ignore"):
        total = a.sum()
    if np.isfinite(total):
        return
    bad = ~np.isfinite(a)
    count = int(np.count_nonzero(bad))
    if count == 0:
        return
    n_nan = int(np.count_nonzero(np.isnan(a)))
    rows = bad if a.ndim == 1 else bad.any(axis=1)
    row = int(np.argmax(rows))
    col = "" if a.ndim == 1 else f", column {int(np.argmax(bad[row]))}"
    raise DataError(f"{where}: {name} has {count} non-finite value(s) ({n_nan} NaN, "
                    f"{count - n_nan} Inf); the first is at row {first_row + row}{col}; "
                    "expected only finite numbers")


def _check_labels(y: np.ndarray, n_classes: int, where: str, first_row: int) -> None:
    if y.size == 0:
        return
    if y.dtype.kind == "f":
        _check_finite(y, "y", where, first_row)
        frac = y != np.floor(y)
        if frac.any():
            row = int(np.argmax(frac))
            raise DataError(f"{where}: labels must be integers 0..{n_classes - 1}; found "
                            f"{_fmt(y[row])} at row {first_row + row}")
    elif y.dtype.kind not in "iu":
        raise DataError(f"{where}: labels have dtype {y.dtype}; expected integers")
    if y.min() >= 0 and y.max() < n_classes:
        return
    bad = (y < 0) | (y >= n_classes)
    row = int(np.argmax(bad))
    raise DataError(f"{where}: labels outside the classes: found label {_fmt(y[row])} at row "
                    f"{first_row + row} but n_classes={n_classes} (labels must be "
                    f"0..{n_classes - 1}); {int(np.count_nonzero(bad))} label(s) out of range")


def _check_block(X, y, task: str, n_classes: int, n_features: int, where: str,
                 first_row: int) -> None:
    if X.ndim != 2 or X.shape[1] != n_features:
        raise DataError(f"{where}: X has shape {X.shape}; expected (rows, {n_features})")
    if y.shape != (X.shape[0],):
        raise DataError(f"{where}: y has shape {y.shape}; expected ({X.shape[0]},), one "
                        "value per row of X")
    _check_finite(X, "X", where, first_row)
    if task == "regression":
        _check_finite(y, "y", where, first_row)
    else:
        _check_labels(y, n_classes, where, first_row)


def check_values(X: np.ndarray, y: np.ndarray, info: DatasetInfo, where: str, *,
                 first_row: int = 0) -> None:
    """Raise DataError if X or y holds NaN/Inf or a label is outside 0..n_classes-1.

    ``where`` starts the message (e.g. "rows [0, 1000) of 'train/'"); ``first_row`` is
    the global index of X's first row, so messages give global row numbers.
    """
    _check_block(np.asarray(X), np.asarray(y), info.task, info.n_classes, info.n_features,
                 where, first_row)


# ---------------------------------------------------------------------------------
# Writing, always atomically.

def _fsync_path(path: str) -> None:
    """fsync a file or folder; best effort, since some file systems refuse it on folders."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def shard_file_name(index: int, n_shards: int) -> str:
    """``part-00003.h5``: zero-padded so that sorting names sorts shards."""
    width = max(5, len(str(max(0, n_shards - 1))))
    return f"part-{index:0{width}d}.h5"


class ShardWriter:
    """Streams blocks of rows into one shard, published atomically at ``close``.

    Rows go to ``<path>.tmp-<pid>-<n>``; ``close`` sets ``n_rows``, flushes, fsyncs and
    renames the file to ``path``, so no reader ever sees a partial shard under the
    final name. Leaving the ``with`` block by an exception removes the temporary file.
    """

    def __init__(self, path, n_features: int, task: str, n_classes: int,
                 dtype="float32", *, true_w=None, true_b=None, label_values=None,
                 feature_names=None, chunk_rows: int | None = None,
                 expected_rows: int | None = None):
        self.path = os.fspath(path)
        where = f"shard '{self.path}'"
        self.dtype = _float_dtype(dtype, where)
        if not isinstance(n_features, numbers.Integral) or n_features < 1:
            raise DataError(f"{where}: n_features must be a positive integer; found "
                            f"{n_features!r}")
        _check_task(task, n_classes, where)
        self.n_features, self.task, self.n_classes = int(n_features), task, int(n_classes)
        true_w, true_b = _check_truth(true_w, true_b, n_features, task, n_classes, where)
        if label_values is not None:
            label_values = np.asarray(label_values, dtype=np.float64).reshape(-1)
            if task == "regression" or label_values.shape != (n_classes,):
                raise DataError(f"{where}: label_values needs one value per class "
                                f"({n_classes}); found {label_values.size}")
        if feature_names is not None:
            feature_names = [str(n) for n in feature_names]
            if len(feature_names) != n_features:
                raise DataError(f"{where}: {len(feature_names)} feature_names for "
                                f"{n_features} features")
        self.n_rows = 0
        self._tmp = f"{self.path}.tmp-{os.getpid()}-{next(_tmp_counter)}"
        rows = chunk_rows or default_block_rows(n_features, self.dtype.itemsize, CHUNK_BYTES)
        if expected_rows:  # a small shard need not allocate a full 1 MiB chunk
            rows = min(rows, max(1, int(expected_rows)))
        y_rows = max(rows, CHUNK_BYTES // 8)
        if expected_rows:
            y_rows = min(y_rows, max(1, int(expected_rows)))
        y_dtype = self.dtype if task == "regression" else np.dtype(np.int64)
        try:
            self._file = h5py.File(self._tmp, "w", locking=False)
        except OSError as e:
            raise OutputError(f"cannot write shard '{self.path}': {e}") from e
        try:
            f = self._file
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["task"] = task
            f.attrs["n_features"] = self.n_features
            f.attrs["n_classes"] = self.n_classes
            f.attrs["n_rows"] = 0
            self._X = f.create_dataset("X", shape=(0, n_features), maxshape=(None, n_features),
                                       chunks=(rows, n_features), dtype=self.dtype)
            self._y = f.create_dataset("y", shape=(0,), maxshape=(None,), chunks=(y_rows,),
                                       dtype=y_dtype)
            if true_w is not None:
                f.create_dataset("true_w", data=true_w)
            if true_b is not None:
                f.attrs["true_b"] = true_b
            if label_values is not None:
                f.attrs["label_values"] = label_values
            if feature_names is not None:
                f.attrs["feature_names"] = feature_names
        except OSError as e:
            self.abort()
            raise OutputError(f"cannot write shard '{self.path}': {e}") from e

    def append(self, X, y) -> None:
        """Append rows; checks shapes, finiteness and labels before writing."""
        if self._file is None:
            raise OutputError(f"shard '{self.path}' is already closed")
        X, y = np.asarray(X), np.asarray(y)
        _check_block(X, y, self.task, self.n_classes, self.n_features,
                     f"rows written to '{self.path}'", self.n_rows)
        a, b = self.n_rows, self.n_rows + X.shape[0]
        if b == a:
            return
        try:
            self._X.resize(b, axis=0)
            self._y.resize(b, axis=0)
            self._X[a:b] = np.asarray(X, dtype=self.dtype)
            self._y[a:b] = np.asarray(y, dtype=self._y.dtype)
        except OSError as e:
            self.abort()
            raise OutputError(f"cannot write shard '{self.path}': {e}") from e
        self.n_rows = b

    def close(self) -> None:
        """Finish the shard and publish it under its final name."""
        if self._file is None:
            return
        try:
            self._file.attrs["n_rows"] = self.n_rows
            self._file.flush()
            self._file.close()
            self._file = None
            _fsync_path(self._tmp)
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise OutputError(f"cannot write shard '{self.path}': {e}") from e
        _fsync_path(os.path.dirname(os.path.abspath(self.path)))

    def abort(self) -> None:
        """Drop the partial shard; the final name is never touched."""
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            os.remove(self._tmp)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _float_dtype(dtype, where: str) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise DataError(f"{where}: dtype must be float32 or float64; found {dtype!r}")
    return dt


def write_shard(path, X, y, task: str, n_classes: int, *, true_w=None, true_b=None,
                chunk_rows: int | None = None, label_values=None, feature_names=None,
                dtype=None) -> None:
    """Write one complete shard atomically (temporary file, fsync, rename).

    ``dtype`` defaults to X's dtype, which must then be float32 or float64.
    """
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2:
        raise DataError(f"shard '{os.fspath(path)}': X must be 2-D; found shape {X.shape}")
    with ShardWriter(path, X.shape[1], task, n_classes, X.dtype if dtype is None else dtype,
                     true_w=true_w, true_b=true_b, label_values=label_values,
                     feature_names=feature_names, chunk_rows=chunk_rows,
                     expected_rows=X.shape[0]) as w:
        w.append(X, y)


# ---------------------------------------------------------------------------------
# Folders, built beside the target and renamed into place.

class FolderBuild:
    """Build a folder under a temporary name beside ``target``; rename it at exit.

    If ``target`` exists at the start, OutputError unless ``overwrite``. If it appears
    while we build (another process made it), the existing one is kept, ours is
    discarded and ``kept_existing`` is set. An exception discards the temporary folder.
    """

    def __init__(self, target, *, overwrite: bool = False):
        self.target = os.path.abspath(os.fspath(target))
        self.overwrite = overwrite
        self.kept_existing = False
        parent, base = os.path.split(self.target)
        self.path = os.path.join(parent, f".{base}.tmp-{os.getpid()}-{next(_tmp_counter)}")

    def __enter__(self) -> FolderBuild:
        if os.path.lexists(self.target) and not self.overwrite:
            raise OutputError(f"output '{self.target}' already exists; remove it or ask to "
                              "overwrite it (--overwrite)")
        try:
            os.makedirs(os.path.dirname(self.target), exist_ok=True)
            os.mkdir(self.path)
        except OSError as e:
            raise OutputError(f"cannot create output folder beside '{self.target}': "
                              f"{e.strerror or e}") from e
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        _fsync_path(self.path)
        try:
            self._publish()
        except OSError as e:
            shutil.rmtree(self.path, ignore_errors=True)
            raise OutputError(f"cannot move the new dataset to '{self.target}': "
                              f"{e.strerror or e}") from e
        _fsync_path(os.path.dirname(self.target))

    def _publish(self) -> None:
        if self.overwrite and os.path.lexists(self.target):
            old = f"{self.path}.old"
            os.rename(self.target, old)
            os.rename(self.path, self.target)
            if os.path.isdir(old) and not os.path.islink(old):
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.remove(old)
            return
        try:
            os.rename(self.path, self.target)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR) \
                    and os.path.lexists(self.target):
                shutil.rmtree(self.path, ignore_errors=True)
                self.kept_existing = True
                return
            raise

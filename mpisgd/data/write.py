"""Writing datasets, always atomically: shards and whole folders.

A shard is written under a temporary name, fsynced and renamed into place
(:class:`ShardWriter`, :func:`write_shard`); a folder is built beside its target and
renamed into place (:class:`FolderBuild`). A reader never sees a partial file or folder
under its final name.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import numbers
import os
import shutil

import h5py
import numpy as np

from mpisgd.data.checks import check_block
from mpisgd.data.format import (
    FORMAT_NAME,
    check_task,
    check_truth,
    float_dtype,
    label_values_array,
    shard_version,
)
from mpisgd.data.read import default_block_rows
from mpisgd.errors import DataError, OutputError
from mpisgd.store.atomic import fsync_path

# Row chunks of about this many bytes: large enough that a contiguous slice is a few
# big reads, small enough that reading a handful of rows does not pull megabytes.
CHUNK_BYTES = 1 << 20

_tmp_counter = itertools.count()
# Shard names of a streamed folder are padded for this many shards (count unknown ahead).
MAX_STREAMED_SHARDS = 10 ** 6


def shard_file_name(index: int, n_shards: int) -> str:
    """``part-00003.h5``: zero-padded so that sorting names sorts shards."""
    width = max(5, len(str(max(0, n_shards - 1))))
    return f"part-{index:0{width}d}.h5"


# ---------------------------------------------------------------------------------
# Shards.

def _chunk_rows(n_features: int, itemsize: int, chunk_rows: int | None,
                expected_rows: int | None) -> tuple[int, int]:
    """HDF5 chunk rows of X and of y for a shard of about ``expected_rows`` rows."""
    rows = chunk_rows or default_block_rows(n_features, itemsize, CHUNK_BYTES)
    if expected_rows:  # a small shard need not allocate a full 1 MiB chunk
        rows = min(rows, max(1, int(expected_rows)))
    y_rows = max(rows, CHUNK_BYTES // 8)
    if expected_rows:
        y_rows = min(y_rows, max(1, int(expected_rows)))
    return rows, y_rows


def _checked_extras(where: str, n_features: int, task: str, n_classes: int, true_w, true_b,
                    label_values, feature_names) -> dict:
    """The optional metadata of a shard, checked and converted; None when absent."""
    true_w, true_b = check_truth(true_w, true_b, n_features, task, n_classes, where)
    if label_values is not None:
        label_values = label_values_array(label_values)
        if task == "regression" or label_values.shape != (n_classes,):
            raise DataError(f"{where}: label_values needs one value per class "
                            f"({n_classes}); found {label_values.size}")
    if feature_names is not None:
        feature_names = [str(n) for n in feature_names]
        if len(feature_names) != n_features:
            raise DataError(f"{where}: {len(feature_names)} feature_names for "
                            f"{n_features} features")
    return dict(true_w=true_w, true_b=true_b, label_values=label_values,
                feature_names=feature_names)


class ShardWriter:
    """Streams blocks of rows into one shard, published atomically at ``close``.

    Rows go to ``<path>.tmp-<pid>-<n>``; ``close`` sets ``n_rows``, flushes, fsyncs and
    renames the file to ``path``, so no reader ever sees a partial shard under the
    final name. Leaving the ``with`` block by an exception removes the temporary file.
    """

    layout = "dense"

    def __init__(self, path, n_features: int, task: str, n_classes: int,
                 dtype="float32", *, true_w=None, true_b=None, label_values=None,
                 feature_names=None, chunk_rows: int | None = None,
                 expected_rows: int | None = None):
        self.path = os.fspath(path)
        where = f"shard '{self.path}'"
        self.dtype = float_dtype(dtype, where)
        if not isinstance(n_features, numbers.Integral) or n_features < 1:
            raise DataError(f"{where}: n_features must be a positive integer; found "
                            f"{n_features!r}")
        check_task(task, n_classes, where)
        self.n_features, self.task, self.n_classes = int(n_features), task, int(n_classes)
        extras = _checked_extras(where, n_features, task, n_classes, true_w, true_b,
                                 label_values, feature_names)
        self.n_rows = 0
        self._tmp = f"{self.path}.tmp-{os.getpid()}-{next(_tmp_counter)}"
        try:
            self._file = h5py.File(self._tmp, "w", locking=False)
        except OSError as e:
            raise OutputError(f"cannot write shard '{self.path}': {e}") from e
        try:
            self._write_attrs(extras)
            self._create(chunk_rows, expected_rows)
        except OSError as e:
            self.abort()
            raise OutputError(f"cannot write shard '{self.path}': {e}") from e

    def _create(self, chunk_rows: int | None, expected_rows: int | None) -> None:
        """Create the (empty, growable) X and y datasets."""
        rows, y_rows = _chunk_rows(self.n_features, self.dtype.itemsize, chunk_rows,
                                   expected_rows)
        d = self.n_features
        self._X = self._file.create_dataset("X", shape=(0, d), maxshape=(None, d),
                                            chunks=(rows, d), dtype=self.dtype)
        self._y = self._file.create_dataset("y", shape=(0,), maxshape=(None,),
                                            chunks=(y_rows,), dtype=self.y_dtype)

    @property
    def y_dtype(self) -> np.dtype:
        return self.dtype if self.task == "regression" else np.dtype(np.int64)

    def _write_attrs(self, extras: dict) -> None:
        """The attributes and the optional metadata (``extras``)."""
        f = self._file
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = shard_version(extras["label_values"], self.layout)
        f.attrs["task"] = self.task
        f.attrs["n_features"] = self.n_features
        f.attrs["n_classes"] = self.n_classes
        f.attrs["n_rows"] = 0
        if extras["true_w"] is not None:
            f.create_dataset("true_w", data=extras["true_w"])
        for name in ("true_b", "label_values", "feature_names"):
            value = extras[name]
            if isinstance(value, np.ndarray) and value.dtype.kind == "U":
                # HDF5 has no fixed-width UCS-4 strings: variable-length UTF-8, as a
                # list of str (feature_names) is stored too
                f.attrs.create(name, value.tolist(), dtype=h5py.string_dtype())
            elif value is not None:
                f.attrs[name] = value

    def append(self, X, y) -> None:
        """Append rows; checks shapes, finiteness and labels before writing."""
        if self._file is None:
            raise OutputError(f"shard '{self.path}' is already closed")
        X, y = np.asarray(X), np.asarray(y)
        check_block(X, y, self.task, self.n_classes, self.n_features,
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
            self._finish()
            self._file.flush()
            self._file.close()
            self._file = None
            fsync_path(self._tmp)
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise OutputError(f"cannot write shard '{self.path}': {e}") from e
        fsync_path(os.path.dirname(os.path.abspath(self.path)))

    def _finish(self) -> None:
        """Attributes known only at the end (a subclass's)."""

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
        fsync_path(self.path)
        try:
            self._publish()
        except OSError as e:
            shutil.rmtree(self.path, ignore_errors=True)
            raise OutputError(f"cannot move the new dataset to '{self.target}': "
                              f"{e.strerror or e}") from e
        fsync_path(os.path.dirname(self.target))

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


# ---------------------------------------------------------------------------------
# Streams of blocks, to one shard file or a folder of rolling shards.

def write_blocks(blocks, output: str, rows_per_shard: int | None, overwrite: bool,
                 n_rows_hint: int | None, writer=ShardWriter, **writer_kw) -> None:
    """Append ``(X, y)`` blocks to one shard file (``output`` ending in ``.h5`` and no
    ``rows_per_shard``), or to a folder of shards of ``rows_per_shard`` rows (one shard
    if None). ``writer``: the shard writer class (dense ``ShardWriter`` or the CSR one,
    whose X is a CsrBlock); ``writer_kw`` its arguments."""
    if rows_per_shard is None and output.endswith(".h5"):
        if os.path.lexists(output) and not overwrite:
            raise OutputError(f"output '{output}' already exists; remove it or ask to "
                              "overwrite it (--overwrite)")
        with writer(output, expected_rows=n_rows_hint, **writer_kw) as w:
            for X, y in blocks:
                w.append(X, y)
        return
    if rows_per_shard is None:
        n_shards = 1
    else:  # only the width of the zero-padded shard numbers depends on this
        n_shards = -(-n_rows_hint // rows_per_shard) if n_rows_hint else MAX_STREAMED_SHARDS
    with FolderBuild(output, overwrite=overwrite) as build:
        current, k = None, 0
        try:
            for X, y in blocks:
                pos = 0
                while pos < len(X):
                    if current is None:
                        if k >= MAX_STREAMED_SHARDS:
                            raise DataError("conversion would write over a million shards; "
                                            "raise rows_per_shard")
                        path = os.path.join(build.path, shard_file_name(k, n_shards))
                        current = writer(path, expected_rows=rows_per_shard or n_rows_hint,
                                         **writer_kw)
                    take = len(X) - pos if rows_per_shard is None else \
                        min(len(X) - pos, rows_per_shard - current.n_rows)
                    current.append(X[pos:pos + take], y[pos:pos + take])
                    pos += take
                    if current.n_rows == rows_per_shard:
                        current.close()
                        current, k = None, k + 1
            if current is not None:
                current.close()
        except BaseException:
            if current is not None:
                current.abort()
            raise

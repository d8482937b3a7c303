"""Convert CSV, NumPy ``.npz`` and LIBSVM/svmlight files to mpisgd shards, streaming.

Text inputs are read in blocks of lines (:mod:`mpisgd.data.inputs`) and appended to a
ShardWriter, so a file larger than memory converts. A first pass over the labels (and,
for LIBSVM, the largest feature index) runs when the task, the label mapping or
n_features must be inferred, over whole rows when missing values are dropped or filled
with column means (:mod:`mpisgd.data.missing`); the second pass parses and writes.
"""

from __future__ import annotations

import numbers
import os
import warnings

import numpy as np

from mpisgd.data.checks import fmt_value
from mpisgd.data.format import DatasetInfo, float_dtype, open_dataset
from mpisgd.data.inputs import detect_format, open_source
from mpisgd.data.labels import WordLabel, missing_text
from mpisgd.data.missing import ColumnMeans, check_policy, missing_label, rows_kept
from mpisgd.data.missing import apply as apply_missing
from mpisgd.data.shuffle import shuffled
from mpisgd.data.write import FolderBuild, ShardWriter, shard_file_name
from mpisgd.errors import DataError, OutputError
from mpisgd.models import TASKS

# Integer labels with more distinct values than this are taken for a regression target.
MAX_INFERRED_CLASSES = 1000
# Below that, an inferred multiclass task with more classes than this, or fewer rows per
# class than that, is more likely a quantity (a count, a score: the diabetes progression
# target has 214 distinct values in 442 rows) than classes: a warning names --task.
WARN_CLASSES = 50
WARN_ROWS_PER_CLASS = 5
# Shard names of a streamed folder are padded for this many shards (count unknown ahead).
_MAX_STREAMED_SHARDS = 10 ** 6


class ConvertWarning(UserWarning):
    """A conversion that succeeded but probably not as the user meant (``warnings``)."""


# ---------------------------------------------------------------------------------
# Labels: what the first pass learns, and the task and mapping decided from it.

class _LabelScan:
    """What the first pass learns of the labels, in memory bounded by their distinct
    values (at most MAX_INFERRED_CLASSES + 1 are kept), never by the rows.

    ``word``: the WordLabel that made the source read its labels as text; then
    ``counts`` holds the rows of each distinct label (class name)."""

    def __init__(self, source, word: WordLabel | None = None):
        self.source = source
        self.n_rows = 0
        self.integer = True
        self.first_fraction = None  # (value, line) of the first non-integer label
        self.distinct: set[float] | None = set()
        self.word = word
        self.counts: dict[str, int] = {}
        self.first_label = None     # (label, line) of the first row, words only

    def update(self, y: np.ndarray, nos: np.ndarray) -> None:
        self.n_rows += len(y)
        if self.word is not None:
            self._update_words(y, nos)
            return
        bad = ~np.isfinite(y)
        if bad.any():
            i = int(np.argmax(bad))
            if np.isnan(y[i]):
                raise missing_label(self.source, nos[i])
            raise DataError(f"{self.source.unit} {nos[i]} of '{self.source.path}': the label "
                            f"is {y[i]}; expected a finite number")
        if self.integer:
            frac = y != np.floor(y)
            if frac.any():
                i = int(np.argmax(frac))
                self.integer, self.first_fraction, self.distinct = False, (y[i], nos[i]), None
        if self.distinct is not None:
            self.distinct.update(np.unique(y).tolist())
            if len(self.distinct) > MAX_INFERRED_CLASSES:
                self.distinct = None

    def _update_words(self, texts: np.ndarray, nos: np.ndarray) -> None:
        gaps = missing_text(texts)
        if gaps.any():
            raise missing_label(self.source, nos[int(np.argmax(gaps))])
        if self.first_label is None and len(texts):
            self.first_label = (str(texts[0]), nos[0])
        values, counts = np.unique(texts, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            self.counts[value] = self.counts.get(value, 0) + count
        if len(self.counts) > MAX_INFERRED_CLASSES:
            raise DataError(f"'{self.source.path}' has more than {MAX_INFERRED_CLASSES} "
                            f"distinct labels in {self.source.label_name}, words such as "
                            f"{self.word.text!r} ({self.source.unit} {self.word.no}); too "
                            "many to be classes: is it the label column (--label-column)?")


def _words_for_regression(source, word: WordLabel, path: str) -> DataError:
    return DataError(f"task 'regression' needs numbers as labels, but {source.label_name} "
                     f"of '{path}' holds words: {source.unit} {word.no} has {word.text!r}; "
                     "word labels are class names (convert without --task regression to "
                     "make them classes), or the target is another column (--label-column)")


def _plan_labels(scan: _LabelScan, task, n_classes, path: str):
    """(task, n_classes, label_values or None) for the scanned labels."""
    if task is None and n_classes is not None:
        task = "regression" if n_classes == 0 else "binary" if n_classes == 2 else "multiclass"
    if scan.word is not None:
        return _plan_words(scan, task, n_classes, path)
    if task is None:
        if not scan.integer or scan.distinct is None:
            task = "regression"
        elif len(scan.distinct) == 1:
            raise DataError(f"cannot infer the task of '{path}': every label is "
                            f"{fmt_value(next(iter(scan.distinct)))}; pass the task (--task)")
        else:
            task = "binary" if len(scan.distinct) == 2 else "multiclass"
            if task == "multiclass":
                _warn_many_classes(len(scan.distinct), scan.n_rows, path)
    if task == "regression":
        if n_classes not in (None, 0):
            raise DataError(f"task 'regression' has n_classes=0; found n_classes={n_classes}")
        return task, 0, None
    if task == "binary" and n_classes not in (None, 2):
        raise DataError(f"task 'binary' has n_classes=2; found n_classes={n_classes}")
    if not scan.integer:
        value, no = scan.first_fraction
        raise DataError(f"task '{task}' needs integer labels, but {scan.source.unit} {no} of "
                        f"'{path}' has label {value}")
    if scan.distinct is None:
        raise DataError(f"'{path}' has more than {MAX_INFERRED_CLASSES} distinct labels; "
                        f"too many for task '{task}' (use --task regression?)")
    values = sorted(scan.distinct)
    want = 2 if task == "binary" else n_classes
    if want is not None and all(0 <= v < want for v in values):
        return task, want, np.arange(want, dtype=np.float64)  # already 0..C-1
    if task == "binary" and set(values) <= {-1.0, 1.0}:
        return task, 2, np.array([-1.0, 1.0])  # the LIBSVM convention: -1 -> 0, +1 -> 1
    shown = ", ".join(fmt_value(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
    if task == "binary" and len(values) != 2:
        raise DataError(f"task 'binary' needs 2 distinct labels (or labels in 0/1 or -1/+1); "
                        f"'{path}' has {len(values)}: {shown}")
    if want is not None and len(values) != want:
        raise DataError(f"n_classes={want}, but the labels of '{path}' are neither 0..{want - 1} "
                        f"nor {want} distinct values to map onto them; found {len(values)}: "
                        f"{shown}")
    if len(values) < 2:
        raise DataError(f"task 'multiclass' needs at least 2 distinct labels; '{path}' has "
                        f"only {shown}")
    return task, len(values), np.array(values, dtype=np.float64)


def _plan_words(scan: _LabelScan, task, n_classes, path: str):
    """(task, n_classes, label_values) for word labels: the classes are the distinct
    labels sorted as strings (as scikit-learn's ``np.unique``), whatever their look."""
    if task == "regression":
        raise _words_for_regression(scan.source, scan.word, path)
    values = sorted(scan.counts)
    shown = ", ".join(values[:10]) + (", ..." if len(values) > 10 else "")
    if len(values) < 2:
        raise DataError(f"every label of '{path}' is {values[0]!r}; classification needs at "
                        "least 2 distinct labels")
    if task is None:
        task = "binary" if len(values) == 2 else "multiclass"
        if task == "multiclass":
            _warn_many_classes(len(values), scan.n_rows, path, words=True)
    want = 2 if task == "binary" else n_classes
    if want is not None and len(values) != want:
        raise DataError(f"task '{task}' with n_classes={want} needs {want} distinct labels; "
                        f"'{path}' has {len(values)}: {shown}")
    first = scan.first_label   # a header taken for data has a label found nowhere else
    if first and first[1] == getattr(scan.source, "ambiguous", None) \
            and scan.counts.get(first[0]) == 1:
        warnings.warn(f"'{path}': line {first[1]} was read as data, but its label "
                      f"{first[0]!r} occurs on no other line; if that line is a header, "
                      f"name the label column (--label-column {first[0]}) to read it as "
                      "one", ConvertWarning, stacklevel=3)
    return task, len(values), np.array(values, dtype=str)


def _warn_many_classes(n_classes: int, n_rows: int, path: str, words: bool = False) -> None:
    if n_classes > WARN_CLASSES or n_rows < WARN_ROWS_PER_CLASS * n_classes:
        advice = ("if they are not classes (an identifier, a name, free text), give the "
                  "label column (--label-column)" if words else
                  "if the label is a quantity (a count, a score, a measurement), convert "
                  "with --task regression")
        warnings.warn(f"'{path}': its {n_classes} distinct {'' if words else 'integer '}"
                      f"labels in {n_rows} rows ({n_rows / n_classes:.3g} rows per class) "
                      f"make a {n_classes}-class multiclass task; {advice}", ConvertWarning,
                      stacklevel=4)


def _word_codes(texts: np.ndarray, classes: np.ndarray, nos: np.ndarray, source,
                path: str) -> np.ndarray:
    """Word labels as their class codes, as float with NaN for a missing value, which is
    how numeric labels arrive: missing values are then handled alike."""
    gaps = missing_text(texts)
    codes = np.minimum(np.searchsorted(classes, texts), len(classes) - 1)
    bad = ~gaps & (classes[codes] != texts)
    if bad.any():   # only if the file changed since the first pass
        i = int(np.argmax(bad))
        raise DataError(f"{source.unit} {nos[i]} of '{path}' has label {str(texts[i])!r}, "
                        f"which is not one of the classes {classes.tolist()} of the first "
                        "pass over it; did the file change?")
    return np.where(gaps, np.nan, codes.astype(np.float64))


def _map_labels(y: np.ndarray, label_values: np.ndarray, nos: np.ndarray, unit: str,
                path: str) -> np.ndarray:
    codes = np.searchsorted(label_values, y)
    ok = label_values[np.minimum(codes, len(label_values) - 1)] == y
    if not ok.all():
        i = int(np.argmax(~ok))
        raise DataError(f"{unit} {nos[i]} of '{path}' has label {fmt_value(y[i])}, which is not "
                        f"one of the classes {[fmt_value(v) for v in label_values]}")
    return codes.astype(np.int64)


def _check_finite_rows(X: np.ndarray, y: np.ndarray | None, nos: np.ndarray,
                       source) -> None:
    """Infinities (missing values, NaN, were handled before) in X or a regression y."""
    with np.errstate(all="ignore"):
        if np.isfinite(X.sum()) and (y is None or np.isfinite(y.sum())):
            return
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{source.unit} {nos[row]} of '{source.path}' has a non-finite value "
                        f"({X[row, col]}) in {source.column_name(int(col))}; expected finite "
                        "numbers")
    if y is not None:
        i = int(np.argmax(~np.isfinite(y)))
        raise DataError(f"{source.unit} {nos[i]} of '{source.path}' has a non-finite value "
                        f"({y[i]}) in {source.label_name}; expected a finite number")


# ---------------------------------------------------------------------------------
# Writing, and the conversion itself.

def _write(blocks, output: str, rows_per_shard, overwrite: bool, n_rows_hint, **writer_kw):
    """Append converted blocks to one shard file, or to a folder of rolling shards."""
    if rows_per_shard is None and output.endswith(".h5"):
        if os.path.lexists(output) and not overwrite:
            raise OutputError(f"output '{output}' already exists; remove it or ask to "
                              "overwrite it (--overwrite)")
        with ShardWriter(output, expected_rows=n_rows_hint, **writer_kw) as w:
            for X, y in blocks:
                w.append(X, y)
        return
    if rows_per_shard is None:
        n_shards = 1
    else:  # only the width of the zero-padded shard numbers depends on this
        n_shards = -(-n_rows_hint // rows_per_shard) if n_rows_hint else _MAX_STREAMED_SHARDS
    with FolderBuild(output, overwrite=overwrite) as build:
        writer, k = None, 0
        try:
            for X, y in blocks:
                pos = 0
                while pos < len(X):
                    if writer is None:
                        if k >= _MAX_STREAMED_SHARDS:
                            raise DataError("conversion would write over a million shards; "
                                            "raise rows_per_shard")
                        path = os.path.join(build.path, shard_file_name(k, n_shards))
                        writer = ShardWriter(path, expected_rows=rows_per_shard or n_rows_hint,
                                             **writer_kw)
                    take = len(X) - pos if rows_per_shard is None else \
                        min(len(X) - pos, rows_per_shard - writer.n_rows)
                    writer.append(X[pos:pos + take], y[pos:pos + take])
                    pos += take
                    if writer.n_rows == rows_per_shard:
                        writer.close()
                        writer, k = None, k + 1
            if writer is not None:
                writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise



def _check_args(path: str, output: str, task, dtype, overwrite: bool, **positive) -> np.dtype:
    """Reject bad arguments before reading anything; returns the output dtype."""
    if not os.path.isfile(path):
        raise DataError(f"input file '{path}' does not exist" if not os.path.exists(path)
                        else f"input '{path}' is not a file")
    if task is not None and task not in TASKS:
        raise DataError(f"task must be one of {', '.join(TASKS)}; found {task!r}")
    dt = float_dtype(dtype, "convert")
    for name, value in positive.items():
        if value is not None and (not isinstance(value, numbers.Integral) or value < 1):
            raise DataError(f"convert: {name} must be a positive integer; found {value!r}")
    if os.path.lexists(output) and not overwrite:
        raise OutputError(f"output '{output}' already exists; remove it or ask to overwrite it "
                          "(--overwrite)")
    return dt


def _first_pass(source, task, missing: str, path: str):
    """(label scan, column means or None). Over the labels unless the task is regression
    and n_features is known; over whole rows when missing values are dropped (a dropped
    row's label must not make a class) or filled with column means. A label that is no
    number makes the labels class names: the pass starts again, reading them as text."""
    try:
        return _scan(source, _LabelScan(source), task, missing, path)
    except WordLabel as word:
        if task == "regression":
            raise _words_for_regression(source, word, path) from None
        source.words = True
        return _scan(source, _LabelScan(source, word), task, missing, path)


def _scan(source, scan: _LabelScan, task, missing: str, path: str):
    means = None
    if missing in ("drop", "mean"):
        if source.n_features is None:   # LIBSVM: its width first
            for _ in source.labels():
                pass
        _check_width(source, path)
        sums = ColumnMeans(source.n_features) if missing == "mean" else None
        for X, y, nos in source.blocks():
            if sums is None:
                keep = rows_kept(X, y)
                y, nos = y[keep], nos[keep]
            else:
                sums.add(X)
            scan.update(y, nos)
        means = sums.means(source) if sums is not None else None
    elif task != "regression" or source.n_features is None:
        for y, nos in source.labels():
            scan.update(y, nos)
    else:
        return scan, None
    if scan.n_rows == 0:
        raise DataError(f"input '{path}' has no data rows" + (
            " without a missing value (--missing drop)" if missing == "drop" else ""))
    _check_width(source, path)
    return scan, means


def _check_width(source, path: str) -> None:
    if not source.n_features:
        raise DataError(f"'{path}' has no feature index; pass n_features (--features)")


def _converted(source, task: str, label_values, path: str, missing: str, means):
    """The second pass: (X, y) blocks, missing values handled, values checked and labels
    mapped to 0..C-1."""
    rows = dropped = filled = 0
    words = source.words
    mapping = np.arange(len(label_values), dtype=np.float64) if words else label_values
    try:
        for X, y, nos in source.blocks():
            if words:
                y = _word_codes(y, label_values, nos, source, path)
            n = len(y)
            if missing in ("zero", "mean"):
                filled += int(np.isnan(X).sum())
            X, y, nos = apply_missing(missing, X, y, nos, source, means)
            dropped += n - len(y)
            _check_finite_rows(X, y if task == "regression" else None, nos, source)
            if task != "regression":
                y = _map_labels(y, mapping, nos, source.unit, path)
            rows += len(y)
            yield X, y
    except WordLabel as word:   # regression without a first pass meets a word
        if task != "regression":
            raise
        raise _words_for_regression(source, word, path) from None
    if rows == 0:
        raise DataError(f"input '{path}' has no data rows")
    if dropped or filled:
        what = (f"dropped {dropped} row(s) with a missing value" if dropped else
                f"filled {filled} missing value(s) with "
                + ("0" if missing == "zero" else "their column's mean"))
        warnings.warn(f"'{path}': {what} (--missing {missing})", ConvertWarning, stacklevel=2)


def convert(input, output, *, task: str | None = None, n_classes: int | None = None,
            label_column: int | str = -1, dtype="float32", rows_per_shard: int | None = None,
            n_features: int | None = None, input_format: str | None = None,
            block_rows: int = 65536, overwrite: bool = False,
            shuffle: int | None = None, missing: str = "error",
            zero_based: bool = False) -> DatasetInfo:
    """Convert a CSV, ``.npz`` or LIBSVM file to an mpisgd dataset; return its info.

    ``output`` ending in ``.h5`` (and no ``rows_per_shard``) is written as one shard
    file; anything else becomes a folder of ``part-*.h5`` shards of ``rows_per_shard``
    rows (one shard if None). Classification labels are mapped to 0..C-1 (sorted
    original values; -1/+1 -> 0/1) and the originals kept in ``label_values``; labels
    that are not all numbers are class names (words), sorted as strings, and
    ``label_values`` holds them as str.
    ``shuffle``: a seed; the rows are written in a random order fixed by it
    (:mod:`mpisgd.data.shuffle`), else in the input's order. ``missing``: what becomes
    of a missing value (an empty CSV field, NA, nan, ...): ``error`` (naming its line and
    column), ``drop`` the row, fill with ``zero`` or with the column's ``mean``.
    ``zero_based``: LIBSVM feature indices start at 0. An inferred multiclass task of
    many classes for its rows warns (:class:`ConvertWarning`) naming ``--task regression``.
    """
    path, output = os.fspath(input), os.fspath(output)
    dt = _check_args(path, output, task, dtype, overwrite, rows_per_shard=rows_per_shard,
                     n_features=n_features, block_rows=block_rows)
    check_policy(missing)
    source = open_source(input_format or detect_format(path), path, label_column=label_column,
                         n_features=n_features, block_rows=block_rows, zero_based=zero_based)
    scan, means = _first_pass(source, task, missing, path)
    task, n_classes, label_values = _plan_labels(scan, task, n_classes, path)
    blocks = _converted(source, task, label_values, path, missing, means)
    if shuffle is not None:
        blocks = shuffled(blocks, shuffle, scan.n_rows or None,
                          source.n_features * dt.itemsize, output)
    _write(blocks, output, rows_per_shard, overwrite,
           scan.n_rows or None, n_features=source.n_features, task=task, n_classes=n_classes,
           dtype=dt, label_values=label_values, feature_names=source.feature_names)
    return open_dataset(output)

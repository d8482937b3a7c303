"""Labels of a converted input: the first pass over them, the task and the mapping to
0..C-1 decided from it, and the codes of each block's labels (dense and CSR outputs alike).

The first pass (:func:`first_pass`) reads the labels, or whole rows when missing values
are dropped or filled with column means; a label that is no number makes the labels
class names ("words") and the pass starts again reading them as text.
:func:`plan_labels` turns what it learnt into (task, n_classes, label_values).
"""

from __future__ import annotations

import warnings

import numpy as np

from mpisgd.data.checks import fmt_value
from mpisgd.data.labels import WordLabel, missing_text
from mpisgd.data.missing import ColumnMeans, missing_label, rows_kept
from mpisgd.errors import DataError

# Integer labels with more distinct values than this are taken for a regression target.
MAX_INFERRED_CLASSES = 1000
# Below that, an inferred multiclass task with more classes than this, or fewer rows per
# class than that, is more likely a quantity (a count, a score: the diabetes progression
# target has 214 distinct values in 442 rows) than classes: a warning names --task.
WARN_CLASSES = 50
WARN_ROWS_PER_CLASS = 5


class ConvertWarning(UserWarning):
    """A conversion that succeeded but probably not as the user meant (``warnings``)."""


# ---------------------------------------------------------------------------------
# Labels: what the first pass learns, and the task and mapping decided from it.

class LabelScan:
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


def words_for_regression(source, word: WordLabel, path: str) -> DataError:
    return DataError(f"task 'regression' needs numbers as labels, but {source.label_name} "
                     f"of '{path}' holds words: {source.unit} {word.no} has {word.text!r}; "
                     "word labels are class names (convert without --task regression to "
                     "make them classes), or the target is another column (--label-column)")


def plan_labels(scan: LabelScan, task, n_classes, path: str):
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


def _plan_words(scan: LabelScan, task, n_classes, path: str):
    """(task, n_classes, label_values) for word labels: the classes are the distinct
    labels sorted as strings (as scikit-learn's ``np.unique``), whatever their look."""
    if task == "regression":
        raise words_for_regression(scan.source, scan.word, path)
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


def word_codes(texts: np.ndarray, classes: np.ndarray, nos: np.ndarray, source,
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


def map_labels(y: np.ndarray, label_values: np.ndarray, nos: np.ndarray, unit: str,
               path: str) -> np.ndarray:
    codes = np.searchsorted(label_values, y)
    ok = label_values[np.minimum(codes, len(label_values) - 1)] == y
    if not ok.all():
        i = int(np.argmax(~ok))
        raise DataError(f"{unit} {nos[i]} of '{path}' has label {fmt_value(y[i])}, which is not "
                        f"one of the classes {[fmt_value(v) for v in label_values]}")
    return codes.astype(np.int64)


def first_pass(source, task, missing: str, path: str):
    """(label scan, column means or None). Over the labels unless the task is regression
    and n_features is known; over whole rows when missing values are dropped (a dropped
    row's label must not make a class) or filled with column means. A label that is no
    number makes the labels class names: the pass starts again, reading them as text."""
    try:
        return _scan(source, LabelScan(source), task, missing, path)
    except WordLabel as word:
        if task == "regression":
            raise words_for_regression(source, word, path) from None
        source.words = True
        return _scan(source, LabelScan(source, word), task, missing, path)


def _scan(source, scan: LabelScan, task, missing: str, path: str):
    means = None
    # A CSR source's labels() leaves out the rows it drops; a dense source's rows are
    # read whole to see their missing values.
    if missing in ("drop", "mean") and source.layout == "dense":
        if source.n_features is None:   # LIBSVM: its width first
            for _ in source.labels():
                pass
        check_width(source, path)
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
    check_width(source, path)
    return scan, means


def check_width(source, path: str) -> None:
    if not source.n_features:
        raise DataError(f"'{path}' has no feature index; pass n_features (--features)")




def report_rows(path: str, rows: int, dropped: int, filled: int, missing: str) -> None:
    """After a second pass: an error if no row is left, a warning saying what the
    missing-value policy dropped or filled."""
    if rows == 0:
        raise DataError(f"input '{path}' has no data rows")
    if dropped or filled:
        what = (f"dropped {dropped} row(s) with a missing value" if dropped else
                f"filled {filled} missing value(s) with "
                + ("0" if missing == "zero" else "their column's mean"))
        warnings.warn(f"'{path}': {what} (--missing {missing})", ConvertWarning, stacklevel=3)

"""``mpisgd data synth|convert|info``: make, convert and inspect datasets from the shell."""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

from mpisgd.data.convert import ConvertWarning, convert
from mpisgd.data.format import DTYPES, DatasetInfo, label_text, open_dataset
from mpisgd.data.inputs import FORMATS
from mpisgd.data.missing import POLICIES
from mpisgd.data.read import default_block_rows, iter_blocks
from mpisgd.data.synth import KINDS, synth_to_folder
from mpisgd.errors import MpisgdError
from mpisgd.models import TASKS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpisgd data", description="Make, convert and inspect "
                                "mpisgd datasets (HDF5 shard files or folders of them).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{synth,convert,info}")

    s = sub.add_parser("synth", help="write a seeded synthetic dataset as a folder of shards")
    s.add_argument("--kind", choices=KINDS, required=True)
    s.add_argument("--rows", type=int, required=True, help="number of rows")
    s.add_argument("--features", type=int, required=True, help="number of features")
    s.add_argument("--classes", type=int, default=None, help="classes (multiclass; default 3)")
    s.add_argument("--noise", type=float, default=0.1, help="label noise std (linear)")
    s.add_argument("--separation", type=float, default=2.0,
                   help="scale of the true weights (logistic, multiclass)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", choices=DTYPES, default="float32")
    s.add_argument("--shards", type=int, default=1, help="number of shard files")
    s.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    s.add_argument("out", metavar="OUT", help="output folder")

    c = sub.add_parser("convert", help="convert CSV, .npz or LIBSVM to mpisgd shards")
    c.add_argument("input", metavar="INPUT")
    c.add_argument("output", metavar="OUTPUT",
                   help="a .h5 file, or a folder of shards (other names or --rows-per-shard)")
    c.add_argument("--task", choices=TASKS, default=None,
                   help="default: inferred from the labels (integers or words: classes, "
                        "2 of them binary; a warning when there are many classes for the "
                        "rows; other numbers: regression)")
    c.add_argument("--classes", type=int, default=None, help="number of classes")
    c.add_argument("--label-column", default="-1",
                   help="CSV label column: 0-based index (negative counts from the end) or "
                        "header name; default: the last")
    c.add_argument("--missing", choices=POLICIES, default="error",
                   help="missing values (empty field, NA, nan, ?): error naming the column "
                        "(default), drop the row, fill with zero or the column mean")
    c.add_argument("--zero-based", action="store_true",
                   help="LIBSVM feature indices start at 0 (scikit-learn's "
                        "dump_svmlight_file(zero_based=True))")
    c.add_argument("--dtype", choices=DTYPES, default="float32")
    c.add_argument("--rows-per-shard", type=int, default=None)
    c.add_argument("--features", type=int, default=None, help="n_features (LIBSVM)")
    c.add_argument("--format", choices=FORMATS, default=None, help="default: from the name")
    c.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    c.add_argument("--shuffle", type=int, default=None, metavar="SEED",
                   help="write the rows in a random order fixed by SEED (for "
                        "train.shuffle_block on data stored in label or time order)")

    i = sub.add_parser("info", help="describe a dataset and stream column statistics")
    i.add_argument("path", metavar="PATH")
    i.add_argument("--columns", type=int, default=8, help="columns to show statistics for")
    i.add_argument("--no-stats", action="store_true", help="metadata only; do not read X, y")
    return p


def _summary(info: DatasetInfo) -> str:
    return (f"{info.path}: {info.n_rows} rows x {info.n_features} features, {info.task}, "
            f"{info.dtype}, {info.n_shards} shard(s)")


class _Moments:
    """Running count, mean, sum of squared deviations, min and max of columns."""

    def __init__(self, d: int):
        self.n, self.mean, self.m2 = 0, np.zeros(d), np.zeros(d)
        self.lo, self.hi = np.full(d, np.inf), np.full(d, -np.inf)

    def add(self, A: np.ndarray) -> None:
        if len(A) == 0:
            return
        # Chan et al.: merge the block's mean and squared deviations with the running
        # ones, which stays accurate where sums of squares would cancel.
        b, bm = len(A), A.mean(axis=0)
        bm2 = ((A - bm) ** 2).sum(axis=0)
        delta, tot = bm - self.mean, self.n + b
        self.mean = self.mean + delta * (b / tot)
        self.m2 = self.m2 + bm2 + delta ** 2 * (self.n * b / tot)
        self.n = tot
        self.lo, self.hi = np.minimum(self.lo, A.min(axis=0)), np.maximum(self.hi, A.max(axis=0))

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))


def _stats(info: DatasetInfo):
    """Column moments, label summary and bad-value counts, streamed in blocks."""
    xs, ys = _Moments(info.n_features), _Moments(1)
    counts = np.zeros(max(info.n_classes, 1), dtype=np.int64)
    nonfinite = outside = 0
    rows = default_block_rows(info.n_features, 8, 8 << 20)  # blocks become float64
    for _, X, y in iter_blocks(info, block_rows=rows):
        Xf = X.astype(np.float64)
        nonfinite += int(np.count_nonzero(~np.isfinite(Xf)))
        xs.add(Xf)
        if info.task == "regression":
            nonfinite += int(np.count_nonzero(~np.isfinite(y)))
            ys.add(y.astype(np.float64)[:, None])
        else:
            ok = (y >= 0) & (y < info.n_classes)
            outside += int(np.count_nonzero(~ok))
            counts += np.bincount(y[ok], minlength=info.n_classes)
    return xs, ys, counts, nonfinite, outside


def _info(args) -> int:
    info = open_dataset(args.path)
    out = [f"path:      {info.path}",
           f"task:      {info.task}" + (f" ({info.n_classes} classes)" if info.n_classes else ""),
           f"rows:      {info.n_rows}",
           f"features:  {info.n_features}",
           f"dtype:     {info.dtype}",
           f"shards:    {info.n_shards}"]
    out += [f"  {shard}  {rows} rows" for shard, rows in zip(info.shards, info.rows)]
    classes = None if info.label_values is None else \
        [label_text(v) for v in info.label_values]
    if classes is not None:
        out.append("labels:    class=original: " + ", ".join(
            f"{k}={v}" for k, v in enumerate(classes)))
    if info.true_w is not None:
        out.append(f"true_w:    present, shape {info.true_w.shape}, "
                   f"norm {np.linalg.norm(info.true_w):.6g}")
    if not args.no_stats:
        xs, ys, counts, nonfinite, outside = _stats(info)
        k = min(max(args.columns, 0), info.n_features)
        names = info.feature_names or [str(j) for j in range(info.n_features)]
        width = max([6] + [len(n) for n in names[:k]])
        out.append(f"column statistics ({k} of {info.n_features} columns, all rows):")
        out.append(f"  {'column':>{width}} {'mean':>12} {'std':>12} {'min':>12} {'max':>12}")
        rows = [(names[j], xs, j) for j in range(k)]
        if info.task == "regression":
            rows.append(("y", ys, 0))
        for name, m, j in rows:
            out.append(f"  {name:>{width}} {m.mean[j]:12.6g} {m.std[j]:12.6g} "
                       f"{m.lo[j]:12.6g} {m.hi[j]:12.6g}")
        if info.task != "regression":
            out.append("class counts: " + ", ".join(
                f"{c}{'' if classes is None else f' ({classes[c]})'}: {n}"
                for c, n in enumerate(counts)))
            if outside:
                out.append(f"labels outside 0..{info.n_classes - 1}: {outside}")
        out.append(f"non-finite values: {nonfinite}")
    print("\n".join(out))
    return 0


def _synth(args) -> int:
    info = synth_to_folder(args.kind, args.out, n_rows=args.rows, n_features=args.features,
                           n_classes=args.classes, noise=args.noise,
                           separation=args.separation, seed=args.seed, dtype=args.dtype,
                           n_shards=args.shards, overwrite=args.overwrite)
    print(f"wrote {_summary(info)}")
    return 0


def _convert(args) -> int:
    column = args.label_column
    if column.lstrip("-").isdigit():
        column = int(column)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvertWarning)
        info = convert(args.input, args.output, task=args.task, n_classes=args.classes,
                       label_column=column, dtype=args.dtype,
                       rows_per_shard=args.rows_per_shard, n_features=args.features,
                       input_format=args.format, overwrite=args.overwrite,
                       shuffle=args.shuffle, missing=args.missing,
                       zero_based=args.zero_based)
    for w in caught:
        print(f"mpisgd: warning: {w.message}", file=sys.stderr)
    print(f"wrote {_summary(info)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``mpisgd data <command> ...`` with ``argv`` (the words after ``data``).

    Returns the exit code: 0, or 2 for a usage, data or output error (message on
    stderr as ``mpisgd: error: ...``, no traceback).
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse exits on --help and on usage errors
        return e.code if isinstance(e.code, int) else 2
    try:
        return {"synth": _synth, "convert": _convert, "info": _info}[args.command](args)
    except MpisgdError as e:
        print(f"mpisgd: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())

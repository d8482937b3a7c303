"""``mpisgd data synth|convert|info``: make, convert and inspect datasets from the shell."""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

from mpisgd.data.convert import ConvertWarning, convert
from mpisgd.data.csr_read import csr_block_rows, iter_csr_blocks
from mpisgd.data.format import DTYPES, DatasetInfo, label_text, open_dataset
from mpisgd.data.hashing import MAX_BITS
from mpisgd.data.inputs import FORMATS
from mpisgd.data.missing import POLICIES
from mpisgd.data.read import default_block_rows, iter_blocks
from mpisgd.data.synth import KINDS, synth_to_folder
from mpisgd.data.synth_sparse import sparse_to_folder
from mpisgd.errors import MpisgdError
from mpisgd.models import TASKS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpisgd data", description="Make, convert and inspect "
                                "mpisgd datasets (HDF5 shard files or folders of them).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{synth,convert,info}")
    _synth_parser(sub)
    _convert_parser(sub)
    i = sub.add_parser("info", help="describe a dataset and stream column statistics")
    i.add_argument("path", metavar="PATH")
    i.add_argument("--columns", type=int, default=8, help="columns to show statistics for")
    i.add_argument("--no-stats", action="store_true", help="metadata only; do not read X, y")
    return p


def _synth_parser(sub) -> None:
    s = sub.add_parser("synth", help="write a seeded synthetic dataset as a folder of shards")
    s.add_argument("--kind", choices=(*KINDS, "sparse"), required=True,
                   help="sparse: CSR shards, Zipf-distributed feature ids, logistic labels")
    s.add_argument("--rows", type=int, required=True, help="number of rows")
    s.add_argument("--features", type=int, required=True,
                   help="number of features (sparse: up to 2^32)")
    s.add_argument("--classes", type=int, default=None, help="classes (multiclass; default 3)")
    s.add_argument("--noise", type=float, default=0.1, help="label noise std (linear)")
    s.add_argument("--separation", type=float, default=2.0,
                   help="scale of the true weights (logistic, multiclass, sparse)")
    s.add_argument("--nnz", type=int, default=20,
                   help="sparse: feature draws per row (repeats merge: at most this many "
                        "non-zeros)")
    s.add_argument("--zipf", type=float, default=1.1,
                   help="sparse: exponent of the feature ids' power law (larger: fewer "
                        "features in most rows)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", choices=DTYPES, default="float32")
    s.add_argument("--shards", type=int, default=1, help="number of shard files")
    s.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    s.add_argument("out", metavar="OUT", help="output folder")


def _convert_parser(sub) -> None:
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
    layout = c.add_mutually_exclusive_group()
    layout.add_argument("--sparse", dest="layout", action="store_const", const="csr",
                        help="write CSR (sparse) shards; default for LIBSVM, SciPy .npz and "
                             "hashed CSV inputs whose dense X would exceed 1 GiB")
    layout.add_argument("--dense", dest="layout", action="store_const", const="dense",
                        help="write dense shards whatever the input")
    c.add_argument("--hash-features", type=int, default=None, metavar="BITS",
                   help=f"CSV: hash the columns into 2^BITS features (1..{MAX_BITS}): numeric "
                        "columns keep their values, others become column=value features")
    c.add_argument("--hash-seed", type=int, default=0, help="seed of the feature hash")
    c.add_argument("--categorical", default=None, metavar="COLS",
                   help="with --hash-features: comma-separated columns (names or 0-based "
                        "indices) hashed as categories even if they hold numbers")
    c.add_argument("--labels", default=None, metavar="FILE.npy",
                   help="the labels of a SciPy sparse .npz (scipy.sparse.save_npz), one per "
                        "row; default: its array 'y'")
    c.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    c.add_argument("--shuffle", type=int, default=None, metavar="SEED",
                   help="write the rows in a random order fixed by SEED (for "
                        "train.shuffle_block on data stored in label or time order)")


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


def _describe(info: DatasetInfo, classes) -> list[str]:
    """The metadata lines of ``data info``."""
    csr = info.layout == "csr"
    out = [f"path:      {info.path}",
           "layout:    " + ("csr (sparse: indptr, indices, values)" if csr else "dense (X)"),
           f"task:      {info.task}" + (f" ({info.n_classes} classes)" if info.n_classes else ""),
           f"rows:      {info.n_rows}",
           f"features:  {info.n_features}"]
    if csr:
        out += [f"non-zeros: {info.nnz} ({info.nnz / info.n_rows:.6g} per row on average, "
                f"density {info.nnz / info.n_rows / info.n_features:.3g})",
                f"dtype:     {info.dtype} values, {info.index_dtype} indices"]
    else:
        out.append(f"dtype:     {info.dtype}")
    out.append(f"shards:    {info.n_shards}")
    out += [f"  {shard}  {rows} rows" + (f", {nnz} non-zeros" if csr else "")
            for shard, rows, nnz in zip(info.shards, info.rows, info.shard_nnz or info.rows)]
    if classes is not None:
        out.append("labels:    class=original: " + ", ".join(
            f"{k}={v}" for k, v in enumerate(classes)))
    if info.true_w is not None:
        out.append(f"true_w:    present, shape {info.true_w.shape}, "
                   f"norm {np.linalg.norm(info.true_w):.6g}")
    return out


def _class_counts(info: DatasetInfo, counts, outside: int, classes) -> list[str]:
    out = ["class counts: " + ", ".join(f"{c}{'' if classes is None else f' ({classes[c]})'}: "
                                        f"{n}" for c, n in enumerate(counts))]
    if outside:
        out.append(f"labels outside 0..{info.n_classes - 1}: {outside}")
    return out


def _dense_stats(info: DatasetInfo, columns: int, classes) -> list[str]:
    xs, ys, counts, nonfinite, outside = _stats(info)
    k = min(max(columns, 0), info.n_features)
    names = info.feature_names or [str(j) for j in range(info.n_features)]
    width = max([6] + [len(n) for n in names[:k]])
    out = [f"column statistics ({k} of {info.n_features} columns, all rows):",
           f"  {'column':>{width}} {'mean':>12} {'std':>12} {'min':>12} {'max':>12}"]
    rows = [(names[j], xs, j) for j in range(k)]
    if info.task == "regression":
        rows.append(("y", ys, 0))
    for name, m, j in rows:
        out.append(f"  {name:>{width}} {m.mean[j]:12.6g} {m.std[j]:12.6g} "
                   f"{m.lo[j]:12.6g} {m.hi[j]:12.6g}")
    if info.task != "regression":
        out += _class_counts(info, counts, outside, classes)
    out.append(f"non-finite values: {nonfinite}")
    return out


# Features counted (for the most frequent) only up to this many: a count per feature.
_COUNT_FEATURES = 1 << 24


def _csr_stats(info: DatasetInfo, classes) -> list[str]:
    """Non-zeros per row, the values and the labels, streamed over blocks that are all
    checked (a damaged shard is an error naming it)."""
    per_row = {"min": np.inf, "max": 0}
    values, ys = _Moments(1), _Moments(1)
    counts = np.zeros(max(info.n_classes, 1), dtype=np.int64)
    seen = np.zeros(info.n_features, np.int64) if info.n_features <= _COUNT_FEATURES else None
    for _, block, y in iter_csr_blocks(info, block_rows=csr_block_rows(info, 8 << 20),
                                       check_values=True):
        lengths = np.diff(block.indptr)
        per_row["min"] = min(per_row["min"], int(lengths.min()))
        per_row["max"] = max(per_row["max"], int(lengths.max()))
        values.add(block.values.astype(np.float64)[:, None])
        if seen is not None:
            seen += np.bincount(block.indices.astype(np.int64), minlength=info.n_features)
        if info.task == "regression":
            ys.add(y.astype(np.float64)[:, None])
        else:
            counts += np.bincount(y, minlength=info.n_classes)
    out = [f"non-zeros per row: mean {info.nnz / info.n_rows:.6g}, min {per_row['min']}, "
           f"max {per_row['max']}",
           f"  {'':>6} {'mean':>12} {'std':>12} {'min':>12} {'max':>12}"]
    for name, m in (("values", values), ("y", ys)):
        if m.n:
            out.append(f"  {name:>6} {m.mean[0]:12.6g} {m.std[0]:12.6g} {m.lo[0]:12.6g} "
                       f"{m.hi[0]:12.6g}")
    if seen is not None:
        top = np.argsort(-seen, kind="stable")[:5]
        out.append(f"features in any row: {int(np.count_nonzero(seen))}; most frequent "
                   "(share of rows): " + ", ".join(f"{j} ({seen[j] / info.n_rows:.3g})"
                                                   for j in top if seen[j]))
    if info.task != "regression":
        out += _class_counts(info, counts, 0, classes)
    return out


def _info(args) -> int:
    info = open_dataset(args.path)
    classes = None if info.label_values is None else \
        [label_text(v) for v in info.label_values]
    out = _describe(info, classes)
    if not args.no_stats:
        out += _csr_stats(info, classes) if info.layout == "csr" else \
            _dense_stats(info, args.columns, classes)
    print("\n".join(out))
    return 0


def _columns(text: str | None) -> tuple:
    """``--categorical a,3,b`` as names and indices."""
    words = [w.strip() for w in (text or "").split(",") if w.strip()]
    return tuple(int(w) if w.lstrip("-").isdigit() else w for w in words)


def _synth(args) -> int:
    if args.kind == "sparse":
        info = sparse_to_folder(args.out, n_rows=args.rows, n_features=args.features,
                                nnz=args.nnz, zipf=args.zipf, separation=args.separation,
                                seed=args.seed, dtype=args.dtype, n_shards=args.shards,
                                overwrite=args.overwrite)
        print(f"wrote {_summary(info)}, {info.nnz} non-zeros")
        return 0
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
                       zero_based=args.zero_based, layout=args.layout,
                       hash_features=args.hash_features, hash_seed=args.hash_seed,
                       categorical=_columns(args.categorical), labels=args.labels)
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

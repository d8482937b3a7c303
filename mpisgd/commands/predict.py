"""``mpisgd eval`` and ``mpisgd predict``: score or apply a trained model.h5, distributed.

    python -m mpisgd eval MODEL.h5 --data PATH [--out metrics.json]
    python -m mpisgd predict MODEL.h5 --data PATH --out PRED.h5|PRED.csv|PRED.npy

MODEL.h5 may be solve's oracle.h5 or a run folder. Every rank takes a contiguous block of
the dataset's rows (``block_range``) and streams it in bounded blocks; nobody reads the
whole file. Rows go through the model's standardisation and kernel exactly as in
``mpisgd.load_model`` (:mod:`mpisgd.predictor`). ``eval`` reduces metric sums (one
Allreduce), so no row is gathered. ``predict`` writes one file in the user's labels
(:mod:`mpisgd.commands.predout`); see :func:`predict_file` for how the ranks take turns
writing it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np
from mpi4py import MPI

from mpisgd import data as datasets
from mpisgd import kernels
from mpisgd.comm import Topology, agree, agreed_call, bcast_value
from mpisgd.commands.common import ArgParser, on_world
from mpisgd.commands.predout import Sink, pred_attrs, sink_class
from mpisgd.data import DatasetInfo, check_values, iter_blocks, open_dataset
from mpisgd.data.format import label_text, same_labels
from mpisgd.data.partition import block_range
from mpisgd.data.read import default_block_rows
from mpisgd.errors import DataError, OutputError
from mpisgd.predictor import TrainedModel
from mpisgd.report.metrics import (
    classification_sums,
    classification_width,
    finish_classification,
    finish_regression,
    format_metrics,
    regression_sums,
)
from mpisgd.runtime.log import say
from mpisgd.store.atomic import publish, temporary_name, write_json
from mpisgd.store.modelfile import load_model

# Rows per prediction block: bounds the memory of X and of the model's activations.
BLOCK_ROWS = 65536
# Predictions a rank computes ahead, before its turn to write comes (see predict_file).
AHEAD_BYTES = 64 << 20
_TOKEN_TAG = 7301

EVAL_USAGE = "python -m mpisgd eval MODEL.h5 --data PATH [--out metrics.json] [--debug]"
PREDICT_USAGE = ("python -m mpisgd predict MODEL.h5 --data PATH --out PRED.h5|PRED.csv|PRED.npy "
                 "[--debug]")


# ---------------------------------------------------------------------------------
def _text(values) -> str:
    return "[" + ", ".join(label_text(v) for v in values) + "]"


def check_data(model: TrainedModel, info: DatasetInfo, labels: bool) -> None:
    """The dataset fits the model: same features; with ``labels`` also the same task and
    classes (in the same original labels). Identical on every rank; raises DataError."""
    nf = model.n_features_in_
    if info.n_features != nf:
        raise DataError(f"data '{info.path}' has {info.n_features} features but model "
                        f"'{model.path}' was trained on {nf}; give data with the training "
                        f"data's columns.")
    if info.layout == "csr" and (model.model_name == "mlp" or model.scaler is not None):
        raise DataError(f"data '{info.path}' is sparse (CSR), but model '{model.path}' "
                        f"{'is an mlp' if model.model_name == 'mlp' else 'standardises rows'}"
                        f", which needs dense rows; convert the data dense (--dense).")
    n_classes = model.model.n_classes
    if labels and (info.task, info.n_classes) != (model.task, n_classes):
        raise DataError(f"data '{info.path}' is a {info.task} task with {info.n_classes} "
                        f"classes but model '{model.path}' was trained on a {model.task} "
                        f"task with {n_classes}; metrics need labels of the same kind.")
    # Data written without label_values (write_shard, synth) says nothing to compare.
    theirs = info.label_values
    if labels and model.task != "regression" and theirs is not None \
            and not same_labels(theirs, model.classes_):
        raise DataError(f"the classes 0..{n_classes - 1} of data '{info.path}' stand for the "
                        f"labels {_text(theirs)}, but the model's for {_text(model.classes_)}; "
                        "convert the data so that its labels map to the same classes as the "
                        "training data's.")


def _predict_blocks(model: TrainedModel, info: DatasetInfo, lo: int, hi: int,
                    check: bool) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, y, model output) per bounded block of rows [lo, hi); local, no MPI.

    The output is in the data's dtype (:meth:`TrainedModel.outputs`).
    """
    if info.layout == "csr":
        for first, block, y in datasets.iter_csr_blocks(info, lo, hi, check_values=check):
            X = kernels.sparse.CSR(block.indptr, block.indices, block.values, info.n_features)
            yield first, y, model.outputs(X)
        return
    rows = min(BLOCK_ROWS, default_block_rows(info.n_features, info.dtype.itemsize))
    for first, X, y in iter_blocks(info, lo, hi, rows):
        if check:
            check_values(X, y, info, where=f"rows [{first}, {first + len(y)}) of "
                                           f"'{info.path}'", first_row=first)
        yield first, y, model.outputs(np.ascontiguousarray(X))


def _warm_up(topo: Topology, model: TrainedModel, info: DatasetInfo) -> None:
    """Collective: compile the predict kernel on one rank per node, then the others load
    numba's cache (ranks compiling at once on shared cores take ranks times as long)."""
    if info.layout == "csr":   # one empty row: a dense one could be 2^32 wide
        X = kernels.sparse.CSR(np.zeros(2, np.int64), np.zeros(0, np.uint32),
                               np.zeros(0, info.dtype), info.n_features)
    else:
        X = np.zeros((1, info.n_features), dtype=info.dtype)
    notice = kernels.compile_notice(model.spec) if topo.rank == 0 else None
    if notice:
        say(notice)
    for turn in (0, 1):
        error = None
        if (topo.local_rank == 0) == (turn == 0):
            try:
                model.outputs(X)
            except Exception as exc:  # noqa: BLE001 - agreed below
                error = exc
        agree(topo.world, error)


def _open_inputs(topo: Topology, model_path: str, data_path: str,
                 labels: bool) -> tuple[TrainedModel, DatasetInfo]:
    """Collective: rank 0 reads the model (broadcast), every rank opens the data's
    metadata; all problems are agreed."""
    model = TrainedModel(bcast_value(topo.world, lambda: load_model(model_path)))
    info = agreed_call(topo.world, open_dataset, data_path)
    agreed_call(topo.world, check_data, model, info, labels)
    _warm_up(topo, model, info)
    return model, info


# ---------------------------------------------------------------------------------
# eval

def _local_sums(model: TrainedModel, info: DatasetInfo, lo: int, hi: int) -> np.ndarray:
    """This rank's metric sums over rows [lo, hi), values checked; local, no MPI."""
    regression, n_classes = model.task == "regression", model.model.n_classes
    sums = np.zeros(5 if regression else classification_width(n_classes))
    for _, y, out in _predict_blocks(model, info, lo, hi, check=True):
        sums += (regression_sums(out, y) if regression
                 else classification_sums(out, y, n_classes, auc=True))
    return sums


def evaluate_file(topo: Topology, model_path: str, data_path: str) -> dict:
    """Collective over the world: metrics of the model on every row of the dataset.

    Each rank scores its block; one Allreduce of the sums; same result on every rank.
    """
    world = topo.world
    model, info = _open_inputs(topo, model_path, data_path, labels=True)
    lo, hi = block_range(info.n_rows, topo.size, topo.rank)
    sums = agreed_call(world, _local_sums, model, info, lo, hi)
    world.Allreduce(MPI.IN_PLACE, sums)
    metrics = (finish_regression(sums) if model.task == "regression"
               else finish_classification(sums, model.model.n_classes))
    return {"model": model.path, "data": info.path, "task": model.task,
            "model_name": model.model_name, "world_size": topo.size, "metrics": metrics}


def eval_main(argv: list[str]) -> int:
    """``mpisgd eval``: every rank runs it (collective over the world)."""
    p = ArgParser(prog="mpisgd eval", usage=EVAL_USAGE,
                  description="Metrics of a trained model on a dataset, computed by all ranks.")
    p.add_argument("model", help="model.h5 written by training, solve's oracle.h5, or the "
                                 "run folder holding one")
    p.add_argument("--data", required=True, help="HDF5 shard file or folder with labels")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    args = p.parse_args(argv)
    return on_world(lambda topo: _eval(topo, args))


def _eval(topo: Topology, args) -> None:
    """Collective over the world: evaluate, print on rank 0, rank 0 writes --out."""
    t0 = time.perf_counter()
    record = evaluate_file(topo, args.model, args.data)
    m = record["metrics"]
    say(f"mpisgd eval: {record['model']} on {record['data']}: {m['n']} rows, "
        f"{topo.size} rank(s), {time.perf_counter() - t0:.2f} s")
    say(f"mpisgd eval: {format_metrics(m)}")
    if args.out:
        out = Path(args.out).resolve()
        bcast_value(topo.world, lambda: write_json(out, record))
        say(f"mpisgd eval: metrics written to {out}")


# ---------------------------------------------------------------------------------
# predict

def _create_output(out: Path, model: TrainedModel, info: DatasetInfo) -> Path:
    """Rank 0: the temporary prediction file, sized for all rows (HDF5, NumPy) or with
    its header (CSV); returns its name."""
    if out.is_dir():
        raise OutputError(f"--out '{out}' is a folder; expected a file name such as "
                          f"'{out / 'pred.h5'}'.")
    sink = sink_class(str(out))(model, info, temporary_name(out))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sink.create(pred_attrs(model, info))
    except OSError as exc:
        sink.tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write '{out}': {exc.strerror or exc}.") from None
    return sink.tmp


def _write(sink: Sink, task: str, first: int, out: np.ndarray) -> None:
    """Write one block of model outputs at global rows [first, ...); the token holder
    only. (``task``: the model's; this is the one call per block, a test's hook.)"""
    sink.write(first, out)


def _write_rows(sink: Sink, task: str, ahead: list, blocks: Iterator) -> None:
    """The token holder: its rows into the file in order, those read ahead first."""
    sink.open()
    try:
        for first, pred in ahead:
            _write(sink, task, first, pred)
        ahead.clear()
        for first, _, pred in blocks:
            _write(sink, task, first, pred)
    finally:
        sink.close()


def _wait_token(comm: MPI.Intracomm, source: int) -> bool:
    """Ranks 1..size-1, each from ``source`` = rank - 1: receive the write token; True
    if every rank before succeeded.

    Polls with a growing sleep (up to 10 ms) instead of a blocking Recv: a rank may wait
    for a long time while others write, and must not spin on a core they need.
    """
    buf = np.zeros(1, dtype=np.int8)
    req = comm.Irecv(buf, source=source, tag=_TOKEN_TAG)
    delay = 1e-4
    while not req.Test():
        time.sleep(delay)
        delay = min(2 * delay, 0.01)
    return bool(buf[0])


def predict_file(topo: Topology, model_path: str, data_path: str, out_path: str) -> dict:
    """Collective over the world: predictions for every row of the dataset in one file,
    in the format of ``out_path``'s extension (:mod:`mpisgd.commands.predout`).

    The predictions are the regression values or the class labels in the user's labels
    (the model's ``classes``); HDF5 and CSV also hold the class probabilities.

    h5py without MPI-IO cannot write one file from several processes at once (nor can
    a CSV be appended to by several), so the ranks take turns in rank order, passing a
    token: rank 0 creates the file sized for all rows under a temporary name, then each
    rank in turn opens it, writes its rows and closes it (close flushes, so the next
    rank, on any node, sees the writes). While a rank waits for its turn it already
    reads its rows and keeps up to AHEAD_BYTES of their predictions, so reading and
    computing run in parallel; only the rows past that budget are read while holding
    the token. The token also carries failure: a rank that failed passes "failed" on and
    the ranks after it skip writing; then all agree on the error and rank 0 deletes the
    temporary file. On success rank 0 renames it to ``out_path`` (atomic: never a
    partial file under that name).
    """
    world, rank, size = topo.world, topo.rank, topo.size
    sink_class(out_path)   # a wrong extension stops every rank before any work
    model, info = _open_inputs(topo, model_path, data_path, labels=False)
    out = Path(out_path).resolve()
    tmp = bcast_value(world, lambda: _create_output(out, model, info))
    sink = sink_class(out_path)(model, info, tmp)
    try:
        lo, hi = block_range(info.n_rows, size, rank)
        blocks = _predict_blocks(model, info, lo, hi, check=False)
        ahead, error = [], None
        try:
            nbytes = 0
            for first, _, pred in blocks:
                ahead.append((first, pred))
                nbytes += pred.nbytes
                if nbytes >= AHEAD_BYTES:
                    break
        except Exception as exc:  # noqa: BLE001 - passed on with the token, agreed below
            error = exc
        upstream_ok = _wait_token(world, rank - 1) if rank > 0 else True
        if upstream_ok and error is None and hi > lo:
            try:
                _write_rows(sink, model.task, ahead, blocks)
            except Exception as exc:  # noqa: BLE001 - passed on with the token, agreed below
                error = exc
        blocks.close()
        if rank + 1 < size:
            ok = np.array([upstream_ok and error is None], dtype=np.int8)
            world.Send(ok, dest=rank + 1, tag=_TOKEN_TAG)
        agree(world, error)
        bcast_value(world, lambda: _publish(tmp, out))
    except BaseException:
        if rank == 0:
            tmp.unlink(missing_ok=True)
        raise
    return {"model": model.path, "data": info.path, "out": str(out), "n_rows": info.n_rows,
            "task": model.task}


def _publish(tmp: Path, out: Path) -> None:
    """Rank 0: fsync the finished file and rename it into place."""
    try:
        publish(tmp, out)
    except OSError as exc:
        raise OutputError(f"cannot write '{out}': {exc.strerror or exc}.") from None


def predict_main(argv: list[str]) -> int:
    """``mpisgd predict``: every rank runs it (collective over the world)."""
    p = ArgParser(prog="mpisgd predict", usage=PREDICT_USAGE,
                  description="Predictions of a trained model for every row of a dataset, in "
                              "the training data's original labels, written by all ranks "
                              "into one file.")
    p.add_argument("model", help="model.h5 written by training, solve's oracle.h5, or the "
                                 "run folder holding one")
    p.add_argument("--data", required=True, help="HDF5 shard file or folder")
    p.add_argument("--out", required=True,
                   help="the prediction file to write; its extension sets the format: .h5 "
                        "(predictions, probabilities, classes), .csv (a header, the "
                        "prediction and a probability per class) or .npy (predictions)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    args = p.parse_args(argv)
    return on_world(lambda topo: _predict(topo, args))


def _predict(topo: Topology, args) -> None:
    """Collective over the world: predict into --out; rank 0 reports."""
    t0 = time.perf_counter()
    r = predict_file(topo, args.model, args.data, args.out)
    say(f"mpisgd predict: {r['n_rows']} predictions of {r['model']} on {r['data']} by "
        f"{topo.size} rank(s) in {time.perf_counter() - t0:.2f} s, written to {r['out']}")

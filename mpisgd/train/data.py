"""A run's rows: the generated dataset's cache, this rank's block, the held-out split.

Workers hold contiguous blocks of rows in rank order (servers hold empty blocks); the
held-out rows are a seeded per-row draw, a k-fold fold, or a separate test dataset.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mpi4py import MPI

from mpisgd import data as datasets
from mpisgd.comm import Topology, agreed_call, bcast_value
from mpisgd.config import JobConfig
from mpisgd.data import DatasetInfo, check_values, open_dataset, read_rows, synth_to_folder
from mpisgd.data.partition import fold_of, holdout_mask
from mpisgd.data.read import iter_selected
from mpisgd.errors import DataError
from mpisgd.runtime.log import say, warn
from mpisgd.runtime.paths import cache_dir
from mpisgd.runtime.resources import memory_budget


@dataclass
class Rows:
    """This rank's training and held-out rows (see :class:`mpisgd.context.Context`)."""

    X: np.ndarray | None
    y: np.ndarray | None
    train_rows: np.ndarray
    test_X: np.ndarray
    test_y: np.ndarray
    test_rows: np.ndarray


def synth_path(cfg: JobConfig) -> Path:
    """The cache folder of the generated dataset: a hash of every generator setting."""
    s = cfg.data.synth
    key = [s.kind, s.rows, s.features, s.classes, s.noise, s.seed, s.shards, s.dtype]
    if s.kind == "sparse":   # (the dense kinds' names stay what earlier caches used)
        key += [s.nnz, s.zipf]
    key = json.dumps(key)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "data" / f"synth-{s.kind}-{s.rows}x{s.features}-{digest}"


def make_synth(cfg: JobConfig) -> str:
    """Rank 0: generate ``[data.synth]`` into its cache folder unless it is there."""
    s = cfg.data.synth
    path = synth_path(cfg)
    if not path.exists():
        say(f"generating {s.kind} data {s.rows} x {s.features} into {path}")
        if s.kind == "sparse":
            datasets.sparse_to_folder(str(path), n_rows=s.rows, n_features=s.features, nnz=s.nnz,
                             zipf=s.zipf, seed=s.seed, dtype=s.dtype, n_shards=s.shards)
            return str(path)
        synth_to_folder(s.kind, str(path), n_rows=s.rows, n_features=s.features,
                        n_classes=s.classes if s.kind == "multiclass" else None,
                        noise=s.noise, seed=s.seed, dtype=s.dtype, n_shards=s.shards)
    return str(path)


def read_block(info: DatasetInfo, lo: int, hi: int, check: bool):
    """Rows [lo, hi) of the dataset, values checked when ``check``; local."""
    X, y = read_rows(info, lo, hi)
    if check:
        check_values(X, y, info, where=f"rows [{lo}, {hi}) of '{info.path}'", first_row=lo)
    return X, y


def read_selected(info: DatasetInfo, lo: int, rows: np.ndarray, check: bool):
    """Rows ``lo + rows`` (ascending) of the dataset, read block by block: memory holds
    the selected rows, not the block."""
    X = np.empty((rows.size, info.n_features), dtype=info.dtype)
    y = np.empty(rows.size, dtype=info.y_dtype)
    at = 0
    for bx, by, pick in iter_selected(info, lo, rows):
        X[at:at + pick.size], y[at:at + pick.size] = bx[pick], by[pick]
        at += pick.size
    if check and rows.size:
        check_values(X, y, info, f"held-out rows of '{info.path}'")
    return X, y


def too_big(cfg: JobConfig, topo: Topology, info: DatasetInfo, rows: int) -> bool:
    """Collective: partition placement keeps each worker's block in memory; True on
    every rank when any rank's block does not fit in its share of memory."""
    need = rows * (info.n_features * info.dtype.itemsize + info.y_dtype.itemsize)
    big = topo.world.allreduce(int(need > memory_budget(topo.local_size)), op=MPI.MAX)
    if big:
        warn(f"a worker's block of '{info.path}' ({need / 2**20:.0f} MiB on some rank) does "
             f"not fit in its share of memory: streaming it in chunks of "
             f"{cfg.data.chunk_rows} rows (data.placement = 'storage', static assignment)")
    return bool(big)


def load_rows(cfg: JobConfig, world: MPI.Intracomm, info: DatasetInfo,
              test_info: DatasetInfo | None, block, storage: bool) -> Rows:
    """Collective: read this rank's rows (``block(n_rows)`` -> its [lo, hi)) and split
    off the held-out ones; with ``storage`` only the held-out rows are loaded (training
    rows are read chunk by chunk while training). Value problems are agreed."""
    check = cfg.data.check_values
    lo, hi = block(info.n_rows)
    X = y = None
    if not storage:
        X, y = agreed_call(world, read_block, info, lo, hi, check)
    if test_info is not None:
        tlo, thi = block(test_info.n_rows)
        test_X, test_y = agreed_call(world, read_block, test_info, tlo, thi, check)
        return Rows(X, y, np.arange(hi - lo, dtype=np.int64), test_X, test_y,
                    np.arange(thi - tlo, dtype=np.int64))
    held = held_out(cfg, world, info, lo, hi, y)
    train_rows = np.flatnonzero(~held).astype(np.int64)
    test_rows = np.flatnonzero(held).astype(np.int64)
    if not storage:
        return Rows(X, y, train_rows, X, y, test_rows)
    test_X, test_y = agreed_call(world, read_selected, info, lo, test_rows, check)
    return Rows(X, y, train_rows, test_X, test_y, np.arange(test_rows.size, dtype=np.int64))


def held_out(cfg: JobConfig, world: MPI.Intracomm, info: DatasetInfo, lo: int, hi: int,
             y) -> np.ndarray:
    """Collective: True for the held-out rows of this rank's block [lo, hi): k-fold
    fold data.fold (stratified by class), else the seeded per-row draw."""
    if cfg.data.folds:
        return fold_holdout(world, info, lo, hi, y, cfg.data.folds, cfg.data.fold,
                            cfg.train.seed)
    return holdout_mask(lo, hi, cfg.data.test_fraction, cfg.train.seed)


def open_inputs(cfg: JobConfig, world: MPI.Intracomm):
    """Collective: (training, test or None) dataset metadata; the synthetic dataset is
    generated first when ``data.train`` is empty. Problems are agreed."""
    train_path = cfg.data.train or bcast_value(world, lambda: make_synth(cfg))
    info = agreed_call(world, open_dataset, train_path)
    test_info = agreed_call(world, open_dataset, cfg.data.test) if cfg.data.test else None
    return info, test_info


def fold_holdout(comm: MPI.Intracomm, info: DatasetInfo, lo: int, hi: int, y: np.ndarray,
                 folds: int, fold: int, seed: int) -> np.ndarray:
    """Collective over ``comm`` (every rank; a rank without rows passes lo == hi): True
    for the rows of this rank's block [lo, hi) of ``info`` that are in test fold ``fold``.

    Classification folds are stratified (see ``partition.fold_of``): one Exscan of the
    ranks' per-class row counts tells each rank how many rows of each class precede its
    block. That needs the blocks to lie in rank order, as :func:`load_rows` places them.
    """
    if info.task == "regression":
        return agreed_call(comm, _folds, info, lo, hi, folds, seed, None, None) == fold
    c = info.n_classes
    valid = y[(y >= 0) & (y < c)]  # a count vector of the same length on every rank
    counts = np.bincount(valid, minlength=c).astype(np.int64)
    before = np.zeros(c, dtype=np.int64)
    comm.Exscan(counts, before)
    if comm.Get_rank() == 0:  # Exscan leaves rank 0's result undefined
        before[:] = 0
    return agreed_call(comm, _folds, info, lo, hi, folds, seed, y, before) == fold


def _folds(info, lo, hi, folds, seed, y, before) -> np.ndarray:
    """fold_of with its ValueError turned into a DataError naming the data; local."""
    try:
        return fold_of(lo, hi, folds, seed, y, before)
    except ValueError as exc:
        raise DataError(f"cannot split rows [{lo}, {hi}) of '{info.path}' into folds: "
                        f"{exc}") from None

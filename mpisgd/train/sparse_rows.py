"""A sparse (CSR) run's rows: this rank's block and its held-out split, as CSR.

The same rows as a dense run of the same data (contiguous blocks in rank order, the
seeded per-row held-out draw, k-fold folds or a separate test dataset), so a sparse job
and a dense job of the densified data see the same minibatches. Partition placement only:
a worker keeps its block in memory, which at a few dozen non-zeros per row is small.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from mpisgd import data as datasets
from mpisgd import kernels
from mpisgd.comm import agreed_call
from mpisgd.config import JobConfig
from mpisgd.data import DatasetInfo
from mpisgd.errors import ConfigError
from mpisgd.train.data import Rows, held_out


def check_sparse_job(cfg: JobConfig, info: DatasetInfo) -> None:
    """What a sparse dataset cannot be trained with (yet); identical on every rank."""
    where = f"dataset '{info.path}' is sparse (CSR)"
    rules = [
        (cfg.mode == "ps" and cfg.ps.node_aggregate, "ps.node_aggregate (a node's workers "
                                                     "sum dense vectors in shared memory)"),
        (cfg.model.name == "mlp", "model.name = 'mlp' (sparse models: linear, logistic, "
                                  "softmax)"),
        (cfg.data.placement != "partition" and cfg.data.assign == "balanced"
         and cfg.ps.backup_workers > 0 and cfg.mode == "ps",
         "data.assign = 'balanced' with ps.backup_workers (a worker takes its next step's "
         "chunks while this one is applied, and a dropped worker skips that step)"),
        (cfg.data.standardize, "data.standardize = true (centring would make every row "
                               "dense; hashed and count features are used as they are)"),
        (cfg.train.sync_every > 1, "train.sync_every > 1 (local SGD averages whole "
                                   "vectors; use synchronous steps)"),
        (cfg.optimizer.name == "adamw", "optimizer.name = 'adamw' (its decay touches every "
                                        "weight; use adam with model.l2)"),
    ]
    for bad, what in rules:
        if bad:
            raise ConfigError(f"{where}; it cannot be trained with {what}.")


def read_csr_block(info: DatasetInfo, lo: int, hi: int, check: bool):
    """Rows [lo, hi) as (kernels.sparse.CSR, y); local. The CSR check (ids in range,
    indptr non-decreasing) runs always, the values' check (finite) when ``check``."""
    indptr, indices, values, y = datasets.read_csr_rows(info, lo, hi, check_values=check)
    return kernels.sparse.CSR(indptr, indices, values, info.n_features), y


def load_sparse_rows(cfg: JobConfig, world: MPI.Intracomm, info: DatasetInfo,
                     test_info: DatasetInfo | None, block) -> Rows:
    """Collective: this rank's block (``block(n_rows)`` -> its [lo, hi)) as CSR and its
    training and held-out rows; problems agreed."""
    check = cfg.data.check_values
    lo, hi = block(info.n_rows)
    X, y = agreed_call(world, read_csr_block, info, lo, hi, check)
    if test_info is not None:
        tlo, thi = block(test_info.n_rows)
        test_X, test_y = agreed_call(world, read_csr_block, test_info, tlo, thi, check)
        return Rows(X, y, np.arange(hi - lo, dtype=np.int64), test_X, test_y,
                    np.arange(thi - tlo, dtype=np.int64))
    held = held_out(cfg, world, info, lo, hi, y)
    return Rows(X, y, np.flatnonzero(~held).astype(np.int64), X, y,
                np.flatnonzero(held).astype(np.int64))

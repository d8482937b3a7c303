"""The run context: what a training mode needs, agreed and prepared by ``train.prepare``.

One object per run, built once on every rank (each rank holding its own rows); the
modes read it and add their timers, counters and reports to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpisgd.comm import Topology
from mpisgd.comm.roles import Roles
from mpisgd.config import JobConfig, replace
from mpisgd.data import DatasetInfo
from mpisgd.data.scale import Scaler
from mpisgd.models import ModelSpec
from mpisgd.report import cost
from mpisgd.report.advice import Advice
from mpisgd.report.timeline import Timeline
from mpisgd.store import runfolder


@dataclass
class Context:
    """What a mode needs to train: this rank's rows, the model's shape, the run folder."""

    cfg: JobConfig
    topo: Topology
    roles: Roles
    run_dir: Path
    run_token: str                 # agreed random id of this run (checkpoint staging names)
    info: DatasetInfo
    X: Any                         # rows: ndarray, kernels.sparse.CSR (a sparse dataset),
                                   # None with storage placement (read chunk by chunk)
    y: np.ndarray | None
    row0: int                      # global id of X[0]
    train_rows: np.ndarray         # local indices of this rank's training rows
    first_train: int               # global training index of train_rows[0]
    n_train: int
    test_X: Any                    # ndarray, or CSR for a sparse dataset
    test_y: np.ndarray
    test_rows: np.ndarray          # local indices into test_X
    n_test: int
    model: str
    n_features: int
    n_classes: int
    n_params: int
    dtype: np.dtype
    spec: ModelSpec
    l2_mask: np.ndarray
    timers: dict = field(default_factory=lambda: dict.fromkeys(cost.CATEGORIES, 0.0))
    # this rank's traffic (logical payload) and the rows its gradient passes read
    counters: dict = field(default_factory=lambda: {"bytes_sent": 0, "bytes_received": 0,
                                                    "rows": 0})
    timeline: Timeline = field(default_factory=lambda: Timeline(False))
    data_report: dict = field(default_factory=dict)   # storage placement: this rank's reads
    # debug.fail_kind = "nan": the steps whose NaN has fired, once per run (a rollback
    # replays them cleanly, as after a transient fault)
    nan_fired: set = field(default_factory=set)
    # the job as given and what this run changed of it; ``cfg`` is the effective job
    effective: Effective | None = None
    # data.standardize: the training rows' per-feature mean and scale, applied to every
    # row this run reads (training and held-out) and stored in model.h5
    scaler: Scaler | None = None
    # warnings about the run's course (divergence, batch, majority class): summary.json
    advice: Advice = field(default_factory=Advice)
    # the dataset is CSR: X and test_X are kernels.sparse.CSR, steps touch a few keys
    sparse: bool = False
    # sparse PS mode: (most keys a push carries, most it pulls), agreed by every rank
    capacity: tuple[int, int] = (0, 0)


class Effective:
    """The job as given (frozen, in config.toml) and the run's own decisions about it.

    A run may have to change a choice the job made: stream a block that does not fit in
    memory (placement), roll back with a smaller learning rate. The job file stays what
    the user wrote; :attr:`cfg` is the job the run actually follows, :attr:`changes`
    says which keys differ, from what, and why. Both go into the run folder
    (``effective.toml``) and the summary (``effective``).
    """

    def __init__(self, job: JobConfig, run_dir: Path):
        self.job = self.cfg = job
        self.run_dir = run_dir
        self.changes: dict[str, dict] = {}

    def change(self, values: dict[str, Any], why: str) -> JobConfig:
        """Every rank: the effective job with ``values`` (dotted keys) changed."""
        self.cfg = replace(self.cfg, values)
        for key, value in values.items():
            self.changes[key] = {"value": value, "job": _get(self.job, key), "why": why}
        return self.cfg

    def record(self) -> None:
        """Rank 0: write the effective job and its changes into the run folder."""
        runfolder.write_effective(self.run_dir, self.cfg, self.changes)


def _get(cfg: JobConfig, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value

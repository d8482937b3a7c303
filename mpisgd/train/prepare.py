"""Everything before the first step: agree on the job, open and read the data, build
the run's :class:`~mpisgd.context.Context`, compile the kernels.

The order matters: everything every rank can check identically (config, world size,
dataset metadata, run folder) is agreed before the first row is read; what only one
rank can see (its rows' values) is agreed right after reading; only then does the
hot loop start, where a failure on one rank aborts the whole job.
"""

from __future__ import annotations

import gc
import secrets
import time
from pathlib import Path

import numpy as np

from mpisgd import kernels, models
from mpisgd.comm import Topology, agree, agreed_call, bcast_value
from mpisgd.comm.roles import assign_roles
from mpisgd.config import JobConfig
from mpisgd.context import Context, Effective
from mpisgd.data import DatasetInfo
from mpisgd.data.partition import block_range
from mpisgd.errors import ConfigError, DataError
from mpisgd.kernels.merge import merge_runs
from mpisgd.runtime.log import say, warn
from mpisgd.store import runfolder
from mpisgd.train.data import load_rows, open_inputs, too_big
from mpisgd.train.sparse_rows import check_sparse_job, load_sparse_rows
from mpisgd.train.standardize import standardize


def check_job(cfg: JobConfig, info: DatasetInfo, test: DatasetInfo | None,
              n_workers: int) -> None:
    """Rules that need the dataset's metadata; identical on every rank."""
    models.check_task(cfg.model.name, info.task, f"dataset '{info.path}'")
    if info.layout == "csr":
        check_sparse_job(cfg, info)
    elif cfg.optimizer.name == "ftrl":
        raise ConfigError(f"optimizer.name = 'ftrl' updates sparse models (docs/sparse.md), "
                          f"but dataset '{info.path}' is dense; dense models use 'sgd', "
                          f"'adagrad', 'adam' or 'adamw'.")
    if info.n_rows < n_workers:
        raise DataError(f"dataset '{info.path}' has {info.n_rows} rows but the job runs "
                        f"{n_workers} worker ranks; every worker needs at least one row.")
    if test is not None:
        for attr in ("task", "n_features", "n_classes", "dtype"):
            if getattr(test, attr) != getattr(info, attr):
                raise DataError(f"test data '{test.path}' has {attr} = {getattr(test, attr)} "
                                f"but training data '{info.path}' has {getattr(info, attr)}.")


def prepare(cfg: JobConfig, topo: Topology) -> Context:
    """Collective over the world: agree on the job, open the data, read this rank's rows."""
    world, size = topo.world, topo.size
    if cfg.mode == "local" and size != 1:
        raise ConfigError(f"mode 'local' runs on one rank, but the job has {size} ranks; "
                          f"use mode = 'allreduce'.", agreed=True)
    roles = assign_roles(size, cfg.mode, cfg.ps.servers, cfg.ps.placement)
    n_workers, me = len(roles.workers), roles.worker_index(topo.rank)
    if cfg.ps.backup_workers >= n_workers and cfg.mode == "ps":
        raise ConfigError(f"ps.backup_workers = {cfg.ps.backup_workers} must be smaller than "
                          f"the number of workers ({n_workers}).", agreed=True)
    info, test_info = open_inputs(cfg, world)
    agreed_call(world, check_job, cfg, info, test_info, n_workers)
    run_dir, run_token = bcast_value(world, lambda: (_start_run_folder(cfg),
                                                      secrets.token_hex(4)))
    effective = Effective(cfg, run_dir)

    def my_block(n_rows: int) -> tuple[int, int]:
        """Workers hold contiguous blocks of rows; servers hold none (empty blocks)."""
        return block_range(n_rows, n_workers, me) if me >= 0 else (0, 0)

    t0 = time.perf_counter()
    lo, hi = my_block(info.n_rows)
    sparse = info.layout == "csr"
    if (cfg.data.placement == "partition" and not cfg.data.folds and not sparse
            and too_big(cfg, topo, info, hi - lo)):
        effective.change({"data.placement": "storage", "data.assign": "static"},
                         "a worker's block does not fit in its share of memory")
        bcast_value(world, effective.record)
    cfg = effective.cfg
    if sparse:
        rows = load_sparse_rows(cfg, world, info, test_info, my_block)
    else:
        rows = load_rows(cfg, world, info, test_info, my_block,
                         cfg.data.placement != "partition")
    ctx = _context(cfg, topo, roles, run_dir, run_token, info, rows, lo, effective)
    ctx.sparse = sparse
    if not sparse:
        standardize(ctx)
    ctx.timers["data"] = time.perf_counter() - t0
    _warm_up_kernels(ctx)
    _freeze_long_lived()
    return ctx


_frozen = False


def _freeze_long_lived() -> None:
    """Once per process, after the kernels are loaded: move every object alive now
    (numba's types and compiled dispatchers, modules: about 110,000 objects) out of the
    cyclic garbage collector's reach. Otherwise each full collection during training
    scans them all: one landed in rank 0's timeline write and took 0.13 s at 4 ranks on
    2 cores while the other ranks waited. Reference counting still frees these objects;
    only cycles among them would stay. Once: jobs run later in the same process (the
    test suite's pool) leave their own objects collectable."""
    global _frozen
    if not _frozen:
        gc.freeze()
        _frozen = True


def _context(cfg, topo, roles, run_dir, run_token, info, rows, lo, effective) -> Context:
    """Collective: count the rows of every rank and build the run's Context."""
    counts = np.array([rows.train_rows.size, rows.test_rows.size], dtype=np.int64)
    totals = np.empty_like(counts)
    topo.world.Allreduce(counts, totals)
    first = topo.world.exscan(int(rows.train_rows.size)) if topo.size > 1 else 0
    n_train, n_test = int(totals[0]), int(totals[1])
    if n_train == 0:
        raise DataError(f"no training rows left in '{info.path}' after holding out "
                        f"data.test_fraction = {cfg.data.test_fraction}.", agreed=True)
    if n_test == 0:
        warn("no held-out rows: test metrics are skipped "
             "(set data.test or data.test_fraction).")
    spec = agreed_call(topo.world, models.ModelSpec.from_config, cfg.model, info.n_features,
                       info.n_classes, task=info.task)
    return Context(cfg=cfg, topo=topo, roles=roles, run_dir=run_dir, run_token=run_token,
                   info=info, X=rows.X, y=rows.y, row0=lo, train_rows=rows.train_rows,
                   first_train=first or 0,   # exscan leaves rank 0 undefined (None)
                   n_train=n_train, test_X=rows.test_X, test_y=rows.test_y,
                   test_rows=rows.test_rows, n_test=n_test, model=cfg.model.name,
                   n_features=info.n_features, n_classes=info.n_classes,
                   n_params=models.spec_n_params(spec), dtype=np.dtype(info.dtype),
                   spec=spec, l2_mask=models.spec_l2_mask(spec), effective=effective)


def _start_run_folder(cfg: JobConfig) -> Path:
    """Rank 0: the run folder with the job as given in config.toml."""
    run = runfolder.create(cfg)
    runfolder.write_config(run, cfg)
    (run / "metrics.jsonl").unlink(missing_ok=True)
    (run / runfolder.EFFECTIVE).unlink(missing_ok=True)
    return run


def _warm_up_kernels(ctx: Context) -> None:
    """Collective: compile the kernels on one rank per node first, then load from cache.

    Eight ranks compiling the same kernel at once on two cores take eight times as
    long as one rank compiling it and the others loading numba's cached result. When
    the node's cache already holds them, every rank loads at once.
    """
    theta = np.zeros(ctx.n_params, dtype=ctx.dtype)
    grad = np.empty_like(theta)
    one = ctx.train_rows[:1] if ctx.train_rows.size else np.empty(0, dtype=np.int64)
    X, y = ctx.X, ctx.y
    if ctx.sparse:
        _warm_up_sparse(ctx, theta, one)
        return
    if X is None:   # storage placement: one row of zeros compiles the same kernels
        X = np.zeros((1, ctx.n_features), dtype=ctx.dtype)
        y = np.zeros(1, dtype=ctx.info.y_dtype)
        one = one[:0] if one.size == 0 else np.zeros(1, dtype=np.int64)
    notice = kernels.compile_notice(ctx.spec)
    if notice and ctx.topo.rank == 0:
        say(notice)
    first = ctx.topo.local_rank == 0 or notice is None
    for turn in (0, 1):
        error = None
        if first == (turn == 0):
            try:
                kernels.spec_loss_grad(ctx.spec, X, y, one, theta, grad)
                kernels.spec_predict(ctx.spec, X[:1], theta)
            except Exception as exc:  # noqa: BLE001 - agreed below
                error = exc
        agree(ctx.topo.world, error)


def _warm_up_sparse(ctx: Context, theta: np.ndarray, one: np.ndarray) -> None:
    """Collective: compile or load the sparse kernels of the job (numba's cache makes the
    second rank of a node load what the first compiled, as for the dense ones)."""
    first = ctx.topo.local_rank == 0
    for turn in (0, 1):
        error = None
        if first == (turn == 0):
            try:
                kernels.sparse.loss_grad_theta(ctx.model, ctx.X, ctx.y, one, theta)
                kernels.sparse.predict(ctx.model, ctx.X, theta, one)
                merge_runs(np.ones(2, np.int64), np.ones(2, ctx.dtype), [1, 1])
            except Exception as exc:  # noqa: BLE001 - agreed below
                error = exc
        agree(ctx.topo.world, error)

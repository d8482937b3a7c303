"""A training run from job to run folder: prepare data and model, fit, evaluate, save.

The order matters: everything every rank can check identically (config, world size,
dataset metadata, run folder) is agreed before the first row is read; what only one
rank can see (its rows' values) is agreed right after reading; only then does the
hot loop start, where a failure on one rank aborts the whole job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mpi4py import MPI

from mpisgd.store import checkpoint, runfolder
from mpisgd.report import cost
from mpisgd import kernels, oracle
from mpisgd.comm import Topology, agree, agreed_call, bcast_value
from mpisgd.comm.roles import Roles, assign_roles
from mpisgd.config import JobConfig
from mpisgd.data import DatasetInfo, check_values, open_dataset, read_rows, synth_to_folder
from mpisgd.data.format import iter_selected
from mpisgd.data.partition import block_range, holdout_mask
from mpisgd.errors import ConfigError, DataError, TrainingError
from mpisgd.evaluation import evaluate, objective, truth_distance
from mpisgd.runtime.log import say, warn
from mpisgd.runtime.paths import cache_dir
from mpisgd.runtime.timeline import Timeline

# Which dataset task each model can learn.
_MODEL_TASKS = {"linear": ("regression",), "logistic": ("binary",),
                "softmax": ("multiclass", "binary"),
                "mlp": ("regression", "binary", "multiclass")}


@dataclass
class Context:
    """What a mode needs to train: this rank's rows, the model's shape, the run folder."""

    cfg: JobConfig
    topo: Topology
    roles: Roles
    run_dir: Path
    run_token: str                 # agreed random id of this run (checkpoint staging names)
    info: DatasetInfo
    X: np.ndarray | None           # None with storage placement (read chunk by chunk)
    y: np.ndarray | None
    row0: int                      # global id of X[0]
    train_rows: np.ndarray         # local indices of this rank's training rows
    first_train: int               # global training index of train_rows[0]
    n_train: int
    test_X: np.ndarray
    test_y: np.ndarray
    test_rows: np.ndarray          # local indices into test_X
    n_test: int
    model: str
    n_features: int
    n_classes: int
    n_params: int
    dtype: np.dtype
    spec: kernels.ModelSpec
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


def synth_path(cfg: JobConfig) -> Path:
    """The cache folder of the generated dataset: a hash of every generator setting."""
    s = cfg.data.synth
    key = json.dumps([s.kind, s.rows, s.features, s.classes, s.noise, s.seed, s.shards,
                      s.dtype])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "data" / f"synth-{s.kind}-{s.rows}x{s.features}-{digest}"


def _make_synth(cfg: JobConfig) -> str:
    s = cfg.data.synth
    path = synth_path(cfg)
    if not path.exists():
        say(f"generating {s.kind} data {s.rows} x {s.features} into {path}")
        synth_to_folder(s.kind, str(path), n_rows=s.rows, n_features=s.features,
                        n_classes=s.classes if s.kind == "multiclass" else None,
                        noise=s.noise, seed=s.seed, dtype=s.dtype, n_shards=s.shards)
    return str(path)


def _check_job(cfg: JobConfig, info: DatasetInfo, test: DatasetInfo | None,
               n_workers: int) -> None:
    """Rules that need the dataset's metadata; identical on every rank."""
    if info.task not in _MODEL_TASKS[cfg.model.name]:
        raise ConfigError(f"model '{cfg.model.name}' cannot learn a {info.task} task "
                          f"(dataset '{info.path}'); use model.name = "
                          f"'{_suggest_model(info.task)}'.")
    if info.n_rows < n_workers:
        raise DataError(f"dataset '{info.path}' has {info.n_rows} rows but the job runs "
                        f"{n_workers} worker ranks; every worker needs at least one row.")
    if test is not None:
        for attr in ("task", "n_features", "n_classes", "dtype"):
            if getattr(test, attr) != getattr(info, attr):
                raise DataError(f"test data '{test.path}' has {attr} = {getattr(test, attr)} "
                                f"but training data '{info.path}' has {getattr(info, attr)}.")


def _suggest_model(task: str) -> str:
    return {"regression": "linear", "binary": "logistic", "multiclass": "softmax"}[task]


def _read_block(info: DatasetInfo, lo: int, hi: int, check: bool):
    X, y = read_rows(info, lo, hi)
    if check:
        check_values(X, y, info, where=f"rows [{lo}, {hi}) of '{info.path}'", first_row=lo)
    return X, y


def prepare(cfg: JobConfig, topo: Topology) -> Context:
    """Collective over the world: agree on the job, open the data, read this rank's rows."""
    world, rank, size = topo.world, topo.rank, topo.size
    if cfg.mode == "local" and size != 1:
        raise ConfigError(f"mode 'local' runs on one rank, but the job has {size} ranks; "
                          f"use mode = 'allreduce'.", agreed=True)
    roles = assign_roles(size, cfg.mode, cfg.ps.servers, cfg.ps.placement)
    n_workers, me = len(roles.workers), roles.worker_index(rank)
    if cfg.ps.backup_workers >= n_workers and cfg.mode == "ps":
        raise ConfigError(f"ps.backup_workers = {cfg.ps.backup_workers} must be smaller than "
                          f"the number of workers ({n_workers}).", agreed=True)
    train_path = cfg.data.train or bcast_value(world, lambda: _make_synth(cfg))
    info = agreed_call(world, open_dataset, train_path)
    test_info = agreed_call(world, open_dataset, cfg.data.test) if cfg.data.test else None
    agreed_call(world, _check_job, cfg, info, test_info, n_workers)
    run_dir, run_token = bcast_value(world, lambda: (_start_run_folder(cfg),
                                                      secrets.token_hex(4)))

    # Workers hold contiguous blocks of rows; servers hold none (empty blocks).
    def my_block(n_rows: int) -> tuple[int, int]:
        return block_range(n_rows, n_workers, me) if me >= 0 else (0, 0)

    t0 = time.perf_counter()
    lo, hi = my_block(info.n_rows)
    if cfg.data.placement == "partition" and not cfg.data.folds:
        _stream_if_too_big(cfg, topo, info, hi - lo)
    # Storage placement reads training rows chunk by chunk while training; only the
    # held-out rows are loaded here.
    storage = cfg.data.placement != "partition"
    X = y = None
    if not storage:
        X, y = agreed_call(world, _read_block, info, lo, hi, cfg.data.check_values)
    if test_info is not None:
        tlo, thi = my_block(test_info.n_rows)
        test_X, test_y = agreed_call(world, _read_block, test_info, tlo, thi,
                                     cfg.data.check_values)
        train_rows = np.arange(hi - lo, dtype=np.int64)
        test_rows = np.arange(thi - tlo, dtype=np.int64)
    else:
        if cfg.data.folds:  # k-fold: the test rows are fold data.fold (stratified by class)
            from mpisgd.commands.cv import fold_holdout

            held = fold_holdout(world, info, lo, hi, y, cfg.data.folds, cfg.data.fold,
                                cfg.train.seed)
        else:
            held = holdout_mask(lo, hi, cfg.data.test_fraction, cfg.train.seed)
        train_rows = np.flatnonzero(~held).astype(np.int64)
        test_rows = np.flatnonzero(held).astype(np.int64)
        if storage:
            test_X, test_y = agreed_call(world, _read_rows_of, info, lo, test_rows,
                                         cfg.data.check_values)
            test_rows = np.arange(test_rows.size, dtype=np.int64)
        else:
            test_X, test_y = X, y
    io_time = time.perf_counter() - t0

    counts = np.array([train_rows.size, test_rows.size], dtype=np.int64)
    totals = np.empty_like(counts)
    world.Allreduce(counts, totals)
    first = world.exscan(int(train_rows.size)) if size > 1 else 0
    first = first or 0  # exscan leaves rank 0 undefined (None)
    n_train, n_test = int(totals[0]), int(totals[1])
    if n_train == 0:
        raise DataError(f"no training rows left in '{info.path}' after holding out "
                        f"data.test_fraction = {cfg.data.test_fraction}.", agreed=True)
    if n_test == 0:
        warn("no held-out rows: test metrics are skipped "
             "(set data.test or data.test_fraction).")

    n_classes = info.n_classes if cfg.model.name != "linear" else 0
    spec = agreed_call(world, kernels.ModelSpec.from_config, cfg.model, info.n_features,
                       n_classes, task=info.task)
    n_params = kernels.spec_n_params(spec)
    ctx = Context(cfg=cfg, topo=topo, roles=roles, run_dir=run_dir, run_token=run_token, info=info, X=X, y=y, row0=lo,
                  train_rows=train_rows, first_train=first, n_train=n_train,
                  test_X=test_X, test_y=test_y, test_rows=test_rows, n_test=n_test,
                  model=cfg.model.name, n_features=info.n_features, n_classes=n_classes,
                  n_params=n_params, dtype=np.dtype(info.dtype),
                  spec=spec, l2_mask=kernels.spec_l2_mask(spec))
    ctx.timers["data"] = io_time
    _warm_up_kernels(ctx)
    return ctx


def memory_budget(local_size: int) -> int:
    """Bytes one rank may use for its data block: 80 % of the node's available memory
    shared by its ranks (``MPISGD_MEMORY_BUDGET`` overrides, bytes per rank)."""
    env = os.environ.get("MPISGD_MEMORY_BUDGET", "")
    if env:
        return int(env)
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 1 << 62   # unknown: assume it fits
    return int(0.8 * available / max(local_size, 1))


def _stream_if_too_big(cfg: JobConfig, topo: Topology, info: DatasetInfo, rows: int) -> None:
    """Collective: partition placement keeps each worker's block in memory; when any
    block does not fit, every rank streams instead (storage placement, static chunks)."""
    need = rows * (info.n_features * info.dtype.itemsize + info.y_dtype.itemsize)
    too_big = topo.world.allreduce(int(need > memory_budget(topo.local_size)), op=MPI.MAX)
    if too_big:
        warn(f"a worker's block of '{info.path}' ({need / 2**20:.0f} MiB on some rank) does "
             f"not fit in its share of memory: streaming it in chunks of "
             f"{cfg.data.chunk_rows} rows (data.placement = 'storage', static assignment)")
        cfg.data.placement, cfg.data.assign = "storage", "static"


def _read_rows_of(info: DatasetInfo, lo: int, rows: np.ndarray, check: bool):
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


def _start_run_folder(cfg: JobConfig) -> Path:
    run = runfolder.create(cfg)
    runfolder.write_config(run, cfg)
    (run / "metrics.jsonl").unlink(missing_ok=True)
    return run


def _warm_up_kernels(ctx: Context) -> None:
    """Collective: compile the kernels on one rank per node first, then load from cache.

    Eight ranks compiling the same kernel at once on two cores take eight times as
    long as one rank compiling it and the others loading numba's cached result.
    """
    theta = np.zeros(ctx.n_params, dtype=ctx.dtype)
    grad = np.empty_like(theta)
    one = ctx.train_rows[:1] if ctx.train_rows.size else np.empty(0, dtype=np.int64)
    X, y = ctx.X, ctx.y
    if X is None:   # storage placement: one row of zeros compiles the same kernels
        X = np.zeros((1, ctx.n_features), dtype=ctx.dtype)
        y = np.zeros(1, dtype=ctx.info.y_dtype)
        one = one[:0] if one.size == 0 else np.zeros(1, dtype=np.int64)
    for turn in (0, 1):
        error = None
        if (ctx.topo.local_rank == 0) == (turn == 0):
            try:
                kernels.spec_loss_grad(ctx.spec, X, y, one, theta, grad)
                kernels.spec_predict(ctx.spec, X[:1], theta)
            except Exception as exc:  # noqa: BLE001 - agreed below
                error = exc
        agree(ctx.topo.world, error)


def _resume_point(ctx: Context, resume: str, skip: int = 0) -> dict | None:
    """Rank 0: the checkpoint to resume from (verified), or None to start fresh.
    ``skip``: pass over this many newer valid checkpoints (rollbacks)."""
    if resume == "auto":
        ckpt, skipped = checkpoint.find_latest(ctx.run_dir, skip)
        for text in skipped:
            warn(text)
        if ckpt is None:
            say(f"mpisgd: no checkpoint in {checkpoint.folder(ctx.run_dir)}; starting fresh")
            return None
    else:
        ckpt = checkpoint.load(Path(resume))
    checkpoint.check_compatible(ckpt, model=ctx.model, n_features=ctx.n_features,
                                n_classes=ctx.n_classes, n_params=ctx.n_params)
    return {"path": str(ckpt.path), "step": ckpt.step, "theta": ckpt.theta,
            "state": ckpt.state, "from": (ckpt.manifest["mode"], ckpt.manifest["world_size"],
                                          ckpt.manifest["servers"])}


def _fit(ctx: Context, mode, theta: np.ndarray, start: int, opt_state: dict | None) -> dict:
    """``mode.fit``, rolling back on divergence when ``train.on_divergence = "rollback"``.

    A NaN/Inf loss or gradient in allreduce mode is seen by every rank at the same step
    (an agreed TrainingError), so every rank rolls back together: rollback n to the n-th
    newest valid checkpoint of the run folder, else to the starting point, with ``optimizer.lr``
    multiplied by ``train.rollback_lr_factor``. After ``train.max_rollbacks`` the
    divergence is final (exit code 4). Each rollback is a line in metrics.jsonl and in
    the summary's ``rollbacks``.
    """
    cfg = ctx.cfg
    # The starting point, kept only when a rollback may need it.
    first = (theta.copy(), start, opt_state) if cfg.train.on_divergence == "rollback" else None
    rollbacks: list[dict] = []
    while True:
        try:
            stats = mode.fit(ctx, theta, start, opt_state)
            break
        except TrainingError as exc:
            if cfg.train.on_divergence != "rollback" or not exc.agreed:
                raise
            if len(rollbacks) == cfg.train.max_rollbacks:
                raise TrainingError(f"{exc} Still diverging after {len(rollbacks)} "
                                    f"rollback(s) (train.max_rollbacks).",
                                    agreed=True) from None
            # Rollback n passes over the n-1 newest checkpoints: the newest may already
            # carry the divergence (finite but huge parameters just before the NaN).
            skip = len(rollbacks)
            point = bcast_value(ctx.topo.world, lambda: _resume_point(ctx, "auto", skip))
            if point is None:
                theta[:], start, opt_state = first[0], first[1], first[2]
                where = f"the starting point (step {start})"
            else:
                theta[:], start, opt_state = point["theta"], point["step"], point["state"]
                where = f"step {start} ({point['path']})"
            old_lr = cfg.optimizer.lr
            cfg.optimizer.lr = old_lr * cfg.train.rollback_lr_factor
            record = {"rollback": len(rollbacks) + 1, "cause": str(exc), "to_step": start,
                      "lr": cfg.optimizer.lr}
            rollbacks.append(record)
            warn(f"{exc} Rollback {len(rollbacks)} of {cfg.train.max_rollbacks}: back to "
                 f"{where}, optimizer.lr {old_lr:g} -> {cfg.optimizer.lr:g}")
            if ctx.topo.rank == 0:
                runfolder.append_metrics(ctx.run_dir, record)
    if rollbacks:
        stats["rollbacks"] = rollbacks
    return stats


def run(cfg: JobConfig, topo: Topology, resume: str | None = None,
        timeline: str | None = None) -> dict:
    """Collective over the world: the whole training run; returns the summary.

    ``resume``: "auto" (the newest valid checkpoint of the run folder, if any) or a
    checkpoint folder. ``timeline``: write per-rank spans (Chrome trace) to this file.
    """
    from mpisgd.modes import allreduce, ps

    t_start = time.perf_counter()
    ctx = prepare(cfg, topo)
    ctx.timeline = Timeline(bool(timeline))
    ctx.timeline.align(topo.world)   # the barrier waits for the slowest rank's setup
    ctx.timers["setup"] = time.perf_counter() - t_start - ctx.timers["data"]
    t_init = time.perf_counter()
    roles = (f" ({len(ctx.roles.servers)} server(s), {len(ctx.roles.workers)} worker(s), "
             f"{cfg.ps.consistency})" if cfg.mode == "ps" else "")
    say(f"mpisgd: {cfg.name}: {cfg.mode} mode{roles}, {topo.size} rank(s) on {topo.node_count} "
        f"node(s); {cfg.model.name} on {ctx.n_train} train / {ctx.n_test} test rows, "
        f"{ctx.n_features} features, {ctx.n_params} parameters ({ctx.dtype}); "
        f"run folder {ctx.run_dir}")
    ranks = topo.world.gather((socket.gethostname(), os.getpid()), root=0)
    if ranks is not None:
        runfolder.write_ranks(ctx.run_dir, ranks)
        if len(ranks) <= 64:   # beyond that, ranks.json alone
            say("mpisgd: process ids by rank: " + ", ".join(
                f"{r}:{pid}" for r, (_, pid) in enumerate(ranks)))
    theta = kernels.spec_init(ctx.spec, ctx.dtype, np.random.default_rng(cfg.train.seed))
    topo.world.Bcast(theta, root=0)
    start, opt_state = 0, None
    point = bcast_value(topo.world, lambda: _resume_point(ctx, resume)) if resume else None
    if point is not None:
        theta[:] = point["theta"]
        start, opt_state = point["step"], point["state"]
        mode, size, servers = point["from"]
        say(f"mpisgd: resuming at step {start} from {point['path']} (written in {mode} mode "
            f"by {size} rank(s), {servers} server(s))")
    ctx.timers["setup"] += time.perf_counter() - t_init
    stats = _fit(ctx, ps if cfg.mode == "ps" else allreduce, theta, start, opt_state)

    t_eval = time.perf_counter()
    eval_before = ctx.timers["eval"]
    final = {"train_objective": objective(ctx, theta)}
    if ctx.n_test:
        final["test"] = evaluate(ctx, theta)
    final.update(truth_distance(ctx, theta))
    if cfg.train.oracle and oracle.available(ctx):
        final["oracle"] = oracle_report(ctx, final)
    ctx.timers["eval"] = eval_before + time.perf_counter() - t_eval
    ctx.timeline.add("eval", t_eval, time.perf_counter())
    reports = topo.world.gather(ctx.data_report, root=0)
    if reports is not None and cfg.data.placement != "partition":
        final["data_io"] = data_io_summary(reports, ctx.roles.workers)
    t = ctx.timers
    slowest = topo.world.allreduce(t["compute"] + t["comm"], op=MPI.MAX)
    summary = {
        "job": cfg.name, "mode": cfg.mode, "model": cfg.model.name,
        "world_size": topo.size, "nodes": topo.node_count, "dtype": str(ctx.dtype),
        "n_train": ctx.n_train, "n_test": ctx.n_test, "n_features": ctx.n_features,
        "n_params": ctx.n_params, **stats, "wall_time_s": None,
        "samples_per_s": stats["samples"] / max(stats["train_time_s"], 1e-12),
        "slowest_rank_step_time_s": slowest, **final,
        "train_data": ctx.info.path, "test_data": cfg.data.test or None,
        "run_dir": str(ctx.run_dir),
    }
    model_path = ctx.run_dir / "model.h5"

    t_save = time.perf_counter()
    if cfg.output.save_model:
        bcast_value(topo.world, lambda: runfolder.write_model(
            ctx.run_dir, theta, model=ctx.model, n_features=ctx.n_features,
            n_classes=ctx.n_classes, task=ctx.info.task, cfg=cfg))
    ctx.timers["checkpoint"] += time.perf_counter() - t_save
    ctx.timeline.add("save", t_save, time.perf_counter())
    if timeline:
        t_tl = time.perf_counter()
        ctx.timeline.write(topo.world, timeline)
        ctx.timers["log"] += time.perf_counter() - t_tl
    # The cost report closes the wall clock: everything above is inside some category.
    wall = time.perf_counter() - t_start
    summary["wall_time_s"] = wall
    c = ctx.counters
    ranks = topo.world.gather(cost.rank_report(ctx.timers, wall, topo.rank, c["bytes_sent"],
                                               c["bytes_received"]) | {
        "x_bytes_read": c["rows"] * ctx.n_features * ctx.dtype.itemsize}, root=0)
    if topo.rank == 0:
        summary["cost"] = cost.summarise(ranks, wall)
    bcast_value(topo.world, lambda: runfolder.write_summary(ctx.run_dir, summary))
    _print_final(summary, model_path if cfg.output.save_model else None)
    return summary


def data_io_summary(reports: list[dict], workers) -> dict:
    """Rank 0: storage placement's read counters, per worker and in all; warns about
    skipped chunks, which must never pass unnoticed."""
    per = {str(r): {k: v for k, v in reports[r].items() if k != "skipped"} for r in workers}
    keys = ("chunks", "bytes", "retries", "skipped_chunks", "skipped_rows", "wait_s",
            "local_chunks", "remote_chunks")
    total = {k: sum(p.get(k, 0) for p in per.values()) for k in keys}
    placed = total["local_chunks"] + total["remote_chunks"]
    total["local_share"] = total["local_chunks"] / placed if placed else None
    skipped = sorted({w for r in reports for w in r.get("skipped", [])})   # servers' too
    if skipped:
        warn(f"skipped {total['skipped_rows']} rows in {total['skipped_chunks']} chunk(s) "
             f"that could not be read (data.on_read_error = 'skip'): " + "; ".join(skipped))
    return {"per_worker": per, "total": total, "skipped": skipped}


def oracle_report(ctx: Context, final: dict) -> dict:
    """Collective: the exact optimum's objective and test MSE, and this run's gap to it."""
    best = oracle.solve(ctx)
    report = {"train_objective": objective(ctx, best)}
    report["objective_gap"] = final["train_objective"] - report["train_objective"]
    if ctx.n_test:
        report["test_mse"] = evaluate(ctx, best)["mse"]
        report["test_mse_rel_gap"] = final["test"]["mse"] / report["test_mse"] - 1.0
    return report


def _print_final(s: dict, model_path: Path | None) -> None:
    parts = [f"done in {s['wall_time_s']:.2f} s", f"{s['samples_per_s']:,.0f} samples/s",
             f"train objective {s['train_objective']:.6g}"]
    test = s.get("test", {})
    for key in ("mse", "rmse", "r2", "accuracy", "precision", "recall", "f1", "log_loss"):
        if key in test:
            parts.append(f"test {key} {test[key]:.6g}")
    if "weight_rel_error" in s:
        parts.append(f"|w - w_true|/|w_true| {s['weight_rel_error']:.3g}")
    if "oracle" in s:
        o = s["oracle"]
        parts.append(f"gap to the exact optimum: objective {o['objective_gap']:.3g}"
                     + (f", test MSE {100 * o['test_mse_rel_gap']:+.3f}%" if "test_mse" in o else ""))
    say("mpisgd: " + ", ".join(parts))
    c = s.get("cost")
    if c:
        split = ", ".join(f"{k} {100 * v:.1f}%" for k, v in c["mean_share"].items() if v >= 0.0005)
        say(f"mpisgd: time split (mean over ranks): {split}; gradient kernel "
            f"{c['kernel_read_GBps']:.2f} GB/s of X read vs {c['machine_read_GBps']:.1f} GB/s "
            f"machine read bandwidth; {c['bytes_sent_total'] / 1e6:.1f} MB sent in all")
    if model_path is not None:
        say(f"mpisgd: model written to {model_path}")
    say(f"mpisgd: summary written to {Path(s['run_dir']) / 'summary.json'}")


@contextlib.contextmanager
def rank_threads(topo: Topology):
    """Numba threads for this rank while the block runs; the previous count after."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(min(numba_threads_for(topo.local_size),
                              numba.config.NUMBA_NUM_THREADS))
    try:
        yield numba.get_num_threads()
    finally:
        numba.set_num_threads(before)


def numba_threads_for(local_size: int) -> int:
    """Threads per rank = cores of this node / ranks on it (at least 1).

    ``MPISGD_NUM_THREADS`` overrides. Oversubscribing cores with threads of several
    ranks makes every rank slower, never faster.
    """
    env = os.environ.get("MPISGD_NUM_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"MPISGD_NUM_THREADS must be a positive integer, got {env!r}.",
                              agreed=True)
        return value
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_size))

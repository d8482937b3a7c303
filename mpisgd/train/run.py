"""A training run from job to run folder: prepare, start or resume, fit, evaluate, save."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from mpisgd import kernels
from mpisgd.comm import Topology, bcast_value
from mpisgd.config import JobConfig
from mpisgd.context import Context
from mpisgd.errors import Interrupted, TrainingError
from mpisgd.modes import allreduce, ps, sparse
from mpisgd.report import cost
from mpisgd.report.timeline import Timeline
from mpisgd.runtime.log import detail, say, warn
from mpisgd.store import checkpoint, modelfile, runfolder
from mpisgd.train.checks import check_batch, check_majority
from mpisgd.train.lost import finish_lost
from mpisgd.train.prepare import prepare
from mpisgd.train.stopped import record_stop
from mpisgd.train.summary import data_io_summary, final_metrics, print_final


def run(cfg: JobConfig, topo: Topology, resume: str | None = None,
        timeline: str | None = None) -> dict:
    """Collective over the world: the whole training run; returns the summary.

    ``resume``: "auto" (the newest valid checkpoint of the run folder, if any) or a
    checkpoint folder. ``timeline``: write per-rank spans (Chrome trace) to this file.
    """
    t_start = time.perf_counter()
    ctx = prepare(cfg, topo)
    ctx.timeline = Timeline(bool(timeline))
    ctx.timeline.align(topo.world)   # the barrier waits for the slowest rank's setup
    ctx.timers["setup"] = time.perf_counter() - t_start - ctx.timers["data"]
    t_init = time.perf_counter()
    _announce(ctx)
    check_batch(ctx)
    theta, start, opt_state = _starting_point(ctx, resume)
    ctx.timers["setup"] += time.perf_counter() - t_init
    try:
        stats = fit(ctx, theta, start, opt_state)
    except Interrupted as exc:   # a signal: summary.json says so, every rank exits alike
        record_stop(ctx, exc, time.perf_counter() - t_start)
        raise
    if stats.get("workers_lost"):   # went on through deaths: no collective any more
        finish_lost(ctx, theta, stats, t_start)

    t_eval = time.perf_counter()
    eval_before = ctx.timers["eval"]
    final = final_metrics(ctx, theta)
    check_majority(ctx, theta, final)
    ctx.timers["eval"] = eval_before + time.perf_counter() - t_eval
    ctx.timeline.add("eval", t_eval, time.perf_counter())
    t_tail = time.perf_counter()   # two small collectives: waiting for the others
    reports = topo.world.gather(ctx.data_report, root=0)
    if reports is not None and ctx.cfg.data.placement != "partition":
        final["data_io"] = data_io_summary(reports, ctx.roles.workers)
    summary = _summary(ctx, stats, final)
    ctx.timers["comm"] += time.perf_counter() - t_tail
    model_path = _save(ctx, theta, timeline)
    # The cost report closes the wall clock: everything above is inside some category.
    summary["wall_time_s"] = wall = time.perf_counter() - t_start
    c = ctx.counters
    ranks = topo.world.gather(cost.rank_report(ctx.timers, wall, topo.rank, c["bytes_sent"],
                                               c["bytes_received"]) | {
        "x_bytes_read": c["rows"] * _row_bytes(ctx)}, root=0)
    if topo.rank == 0:
        summary["cost"] = cost.summarise(ranks, wall)
    bcast_value(topo.world, lambda: runfolder.write_summary(ctx.run_dir, summary))
    print_final(summary, model_path)
    return summary


def _row_bytes(ctx: Context) -> float:
    """Bytes of X a training pass reads per row: dense, or a sparse row's mean non-zeros."""
    if not ctx.sparse:
        return ctx.n_features * ctx.dtype.itemsize
    info = ctx.info
    return info.nnz / max(1, info.n_rows) * (info.index_dtype.itemsize + ctx.dtype.itemsize)


def _announce(ctx: Context) -> None:
    """Collective: rank 0 says what runs where; ranks.json names every rank's process."""
    cfg, topo = ctx.cfg, ctx.topo
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
            detail("mpisgd: process ids by rank: " + ", ".join(
                f"{r}:{pid}" for r, (_, pid) in enumerate(ranks)))


def _starting_point(ctx: Context, resume: str | None):
    """Collective: (theta, first step, optimizer state): fresh, or from a checkpoint."""
    theta = kernels.spec_init(ctx.spec, ctx.dtype, np.random.default_rng(ctx.cfg.train.seed))
    ctx.topo.world.Bcast(theta, root=0)
    if not resume:
        return theta, 0, None
    point = bcast_value(ctx.topo.world, lambda: _resume_point(ctx, resume))
    if point is None:
        return theta, 0, None
    theta[:] = point["theta"]
    mode, size, servers = point["from"]
    say(f"mpisgd: resuming at step {point['step']} from {point['path']} (written in {mode} "
        f"mode by {size} rank(s), {servers} server(s))")
    return theta, point["step"], point["state"]


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


def fit(ctx: Context, theta: np.ndarray, start: int, opt_state: dict | None) -> dict:
    """The mode's ``fit``, rolling back on divergence when ``train.on_divergence =
    "rollback"``.

    A NaN/Inf loss or gradient in allreduce mode is seen by every rank at the same step
    (an agreed TrainingError), so every rank rolls back together: rollback n to the n-th
    newest valid checkpoint of the run folder, else to the starting point, with the
    learning rate multiplied by ``train.rollback_lr_factor`` (an effective change of
    ``optimizer.lr``: the job stays as given). After ``train.max_rollbacks`` the
    divergence is final (exit code 4). Each rollback is a line in metrics.jsonl and in
    the summary's ``rollbacks``.
    """
    mode = ps if ctx.cfg.mode == "ps" else sparse if ctx.sparse else allreduce
    # The starting point, kept only when a rollback may need it.
    first = (theta.copy(), start, opt_state) if ctx.cfg.train.on_divergence == "rollback" \
        else None
    rollbacks: list[dict] = []
    while True:
        try:
            stats = mode.fit(ctx, theta, start, opt_state)
            break
        except TrainingError as exc:
            if ctx.cfg.train.on_divergence != "rollback" or not exc.agreed:
                raise
            start, opt_state = _roll_back(ctx, exc, theta, first, rollbacks)
    if rollbacks:
        stats["rollbacks"] = rollbacks
    return stats


def _roll_back(ctx: Context, exc: TrainingError, theta: np.ndarray, first,
               rollbacks: list[dict]):
    """Collective: restore ``theta`` from the next older checkpoint (else ``first``),
    lower the effective learning rate; returns (step, optimizer state)."""
    t = ctx.cfg.train
    if len(rollbacks) == t.max_rollbacks:
        raise TrainingError(f"{exc} Still diverging after {len(rollbacks)} "
                            f"rollback(s) (train.max_rollbacks).", agreed=True) from None
    # Rollback n passes over the n-1 newest checkpoints: the newest may already carry
    # the divergence (finite but huge parameters just before the NaN).
    skip = len(rollbacks)
    point = bcast_value(ctx.topo.world, lambda: _resume_point(ctx, "auto", skip))
    if point is None:
        theta[:], start, opt_state = first
        where = f"the starting point (step {start})"
    else:
        theta[:], start, opt_state = point["theta"], point["step"], point["state"]
        where = f"step {start} ({point['path']})"
    old_lr = ctx.cfg.optimizer.lr
    ctx.cfg = ctx.effective.change({"optimizer.lr": old_lr * t.rollback_lr_factor},
                                   f"rolled back {len(rollbacks) + 1} time(s) after "
                                   f"divergence")
    record = {"rollback": len(rollbacks) + 1, "cause": str(exc), "to_step": start,
              "lr": ctx.cfg.optimizer.lr}
    rollbacks.append(record)
    warn(f"{exc} Rollback {len(rollbacks)} of {t.max_rollbacks}: back to "
         f"{where}, optimizer.lr {old_lr:g} -> {ctx.cfg.optimizer.lr:g}")
    if ctx.topo.rank == 0:
        runfolder.append_metrics(ctx.run_dir, record)
        ctx.effective.record()
    return start, opt_state


def _summary(ctx: Context, stats: dict, final: dict) -> dict:
    """Collective (one allreduce): the run's summary record, wall time still open."""
    cfg, topo, t = ctx.cfg, ctx.topo, ctx.timers
    slowest = topo.world.allreduce(t["compute"] + t["comm"], op=MPI.MAX)
    return {
        "job": cfg.name, "mode": cfg.mode, "model": cfg.model.name,
        "world_size": topo.size, "nodes": topo.node_count, "dtype": str(ctx.dtype),
        "n_train": ctx.n_train, "n_test": ctx.n_test, "n_features": ctx.n_features,
        "n_params": ctx.n_params, **stats, "wall_time_s": None,
        "samples_per_s": stats["samples"] / max(stats["train_time_s"], 1e-12),
        "slowest_rank_step_time_s": slowest, **final,
        "train_data": ctx.info.path, "test_data": cfg.data.test or None,
        "run_dir": str(ctx.run_dir), "effective": ctx.effective.changes,
        "warnings": ctx.advice.records,
    }


def _save(ctx: Context, theta: np.ndarray, timeline: str | None) -> Path | None:
    """Collective: model.h5 (when ``output.save_model``) and the timeline file."""
    t_save = time.perf_counter()
    path = None
    if ctx.cfg.output.save_model:
        path = bcast_value(ctx.topo.world, lambda: modelfile.write_model(
            ctx.run_dir, theta, ctx.spec, ctx.info.task, ctx.cfg,
            **modelfile.data_meta(ctx.info, ctx.scaler)))
    ctx.timers["checkpoint"] += time.perf_counter() - t_save
    ctx.timeline.add("save", t_save, time.perf_counter())
    if timeline:
        t_tl = time.perf_counter()
        ctx.timeline.write(ctx.topo.world, timeline)
        ctx.timers["log"] += time.perf_counter() - t_tl
    return path

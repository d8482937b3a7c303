"""Allreduce mode: synchronous data parallelism (and ``local``, its one-rank case).

Every rank holds the parameters, computes the gradient sum of its rows of each global
minibatch, and one in-place buffer Allreduce sums [gradient, loss, row count] across
ranks; every rank then applies the same update. The hot loop moves buffers only: no
pickling, no allocation per step beyond the kernel's block buffers.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np

from mpisgd.store import runfolder
from mpisgd.runtime import signals
from mpisgd.comm import agree
from mpisgd.comm.reduce import CompressedAllreduce, make_reducer
from mpisgd.errors import Interrupted
from mpisgd.evaluation import evaluate
from mpisgd.runtime.log import say
from mpisgd.report.memory import node_memory
from mpisgd.optim import clip_factor, learning_rate, sq_norm
from mpisgd.runtime.progress import Progress
from mpisgd.comm.watchdog import StepWatchdog
from mpisgd.modes.batches import make_batches
from mpisgd.modes.common import (EarlyStopping, Hooks, Saver, StepPlan, check_finite,
    finish_gradient, gradient_codec)
from mpisgd.modes.localsgd import Averager
from mpisgd.modes.nodeparams import NodeParams


def fit(ctx, theta: np.ndarray, start_step: int = 0, opt_state: dict | None = None) -> dict:
    """Collective over the world: train ``theta`` in place from ``start_step``.

    Returns run statistics. Raises Interrupted (agreed) after writing a checkpoint when
    any rank received SIGTERM/SIGUSR1.
    """
    cfg = ctx.cfg
    P = ctx.n_params
    opt_state, residuals = split_residuals(opt_state)
    # [gradient sum, loss sum, rows, checkpoint request, stop request]: requests ride on
    # the gradient's allreduce, so every rank learns of them at the same step for free.
    buf = np.zeros(P + 4, dtype=ctx.dtype)
    local_sgd = cfg.train.sync_every > 1
    with _reducer(ctx, buf) as reduce:
        # A node that reduces in shared memory also keeps the parameters there, once
        # (not with local SGD: each rank's parameters drift apart between averagings).
        shared = reduce.window is not None and not local_sgd
        with NodeParams(ctx, theta, shared, opt_state) as params:
            if residuals is not None and getattr(reduce, "residual", None) is not None:
                _load_residual(reduce.residual, residuals, ctx.topo)
            with Averager(ctx, params) if local_sgd else nullcontext() as averager:
                held = params.held_bytes()
                held["buffers"] = buf.nbytes + reduce.window_bytes + (
                    averager.buf.nbytes if averager else 0)
                memory = node_memory(ctx.topo, held)
                stats = _loop(ctx, params, buf, reduce, start_step, averager)
    stats["allreduce"] = reduce.method
    stats["params_shared"] = params.shared
    if memory is not None:
        stats["memory"] = memory
    return stats


def _reducer(ctx, buf: np.ndarray):
    """Collective: the gradient reducer of the job: compressed, flat or hierarchical."""
    comm = ctx.cfg.comm
    codec = gradient_codec(ctx, ctx.n_params)
    if codec is None:
        return make_reducer(comm.allreduce, ctx.topo, buf)
    return CompressedAllreduce(ctx.topo.world, buf, ctx.n_params, codec, comm.error_feedback)


def split_residuals(state: dict | None) -> tuple[dict | None, np.ndarray | None]:
    """(the optimizer's part of a checkpoint's state, the ranks' error-feedback residuals)."""
    if not state or "ef_residual" not in state:
        return state, None
    rest = {k: v for k, v in state.items() if k != "ef_residual"}
    return rest, state["ef_residual"]


def _load_residual(residual: np.ndarray, saved: np.ndarray, topo) -> None:
    """This rank's residual from a checkpoint's (one row per rank of the saving run). At
    another world size rows cannot be matched to ranks; rank 0 takes their sum, so the
    gradient mass not yet sent is kept, only its split between ranks changes."""
    if saved.ndim != 2 or saved.shape[1] != residual.size:
        return
    if saved.shape[0] == topo.size:
        residual[:] = saved[topo.rank]
    elif topo.rank == 0:
        residual[:] = saved.sum(axis=0)


def _checkpoint_state(params: NodeParams, reduce, world) -> dict:
    """Collective: the whole-vector optimizer state, plus every rank's residual on rank 0."""
    state = params.state()
    residual = getattr(reduce, "residual", None)
    if residual is not None:
        rows = world.gather(residual, root=0)
        if rows is not None:
            state["ef_residual"] = np.stack(rows)
    return state


def _loop(ctx, params: NodeParams, buf: np.ndarray, reduce, start_step: int,
          averager: "Averager | None") -> dict:
    """The training loop over ``params`` (see :func:`fit`), with the job's batches."""
    plan = make_batches(ctx, make_plan(ctx))
    try:
        with StepWatchdog(ctx.cfg.train.step_timeout) as dog:
            stats = _steps(ctx, params, buf, reduce, start_step, averager, plan, dog)
    except Exception as exc:
        # close() is collective (the balanced counter): only when every rank raises.
        if getattr(exc, "agreed", False):
            plan.close()
        raise
    plan.close()
    ctx.data_report = plan.report()
    return stats


def _steps(ctx, params, buf, reduce, start_step, averager, plan, dog) -> dict:
    cfg, world = ctx.cfg, ctx.topo.world
    P = ctx.n_params
    spe, total = plan.steps_per_epoch, plan.total
    theta = params.theta
    grad = buf[:P]
    period_loss = period_rows = 0.0   # local SGD: sums since the last averaging
    last_sync = start_step
    measure_wait = cfg.train.measure_wait and world.Get_size() > 1
    hooks = Hooks(cfg.debug, ctx.topo.rank, ctx.nan_fired)
    saver = Saver(ctx)
    stopper = EarlyStopping(cfg.train.patience)
    trace = {} if cfg.debug.trace_rows else None
    progress = Progress(cfg.output.progress, total, ctx.topo.rank == 0)
    timers, counters, timeline = ctx.timers, ctx.counters, ctx.timeline
    samples = epoch_rows = 0
    loss_sum = 0.0
    t_train = t_epoch = time.perf_counter()
    step = start_step
    while step < total:
        epoch = step // spe
        t0 = time.perf_counter()
        dog.computing(step)
        hooks.before_gradient(step)
        waited = plan.wait_s
        loss_part, n_rows, ids = plan.gradient(step, theta, grad)
        hooks.after_gradient(step, grad)
        waited = plan.wait_s - waited
        if trace is not None:
            trace.setdefault(epoch, []).append(ids)
        if averager is not None:
            # Local SGD: a step on this rank's rows alone; averaging every k steps.
            lr = learning_rate(cfg.optimizer, step, epoch, total)
            if n_rows:
                finish_gradient(grad, n_rows, theta, cfg.model.l2, ctx.l2_mask)
                if cfg.optimizer.clip_norm:
                    grad *= ctx.dtype.type(clip_factor(sq_norm(grad), cfg.optimizer.clip_norm))
                params.update(grad, lr, cfg.model.l1)
            period_loss += loss_part
            period_rows += n_rows
            t1 = time.perf_counter()
            if not averager.due(step, spe, total):
                timers["compute"] += t1 - t0 - waited
                timers["data"] += waited
                counters["rows"] += n_rows
                step += 1
                continue
            buf[P:] = (period_loss, period_rows, saver.time_due(), signals.requested())
            dog.waiting(step, "the parameter averaging")
            averager(buf[P:])
            dog.idle()
            t2 = time.perf_counter()
            count = float(buf[P + 1])
            loss = float(buf[P]) / count if count else 0.0
            # Averaged parameters are the same on every rank, so every rank raises together.
            check_finite(loss, theta, step, lr)
            period_loss = period_rows = 0.0
        else:
            buf[P] = loss_part
            buf[P + 1] = n_rows
            buf[P + 2] = saver.time_due()
            buf[P + 3] = signals.requested()
            if measure_wait:  # costs a barrier per step: for profiling only
                t_wait = time.perf_counter()
                world.Barrier()
                timers["wait"] += time.perf_counter() - t_wait
            t1 = time.perf_counter()
            dog.waiting(step, "the gradient allreduce")
            reduce(step)
            dog.idle()
            t2 = time.perf_counter()
            count = float(buf[P + 1])
            lr = learning_rate(cfg.optimizer, step, epoch, total)
            # No rows at all: every chunk of this step was skipped (data.on_read_error =
            # "skip"). The same on every rank: all skip the update together.
            loss = float(buf[P]) / count if count else 0.0
            if count:
                finish_gradient(grad, count, theta, cfg.model.l2, ctx.l2_mask)
                if cfg.optimizer.clip_norm:   # the reduced gradient is the same everywhere
                    grad *= ctx.dtype.type(clip_factor(sq_norm(grad), cfg.optimizer.clip_norm))
                # The reduced buffer is the same on every rank and NaN/Inf survive any
                # summation order, so every rank raises here together: no hang.
                check_finite(loss, grad, step, lr)
                params.update(grad, lr, cfg.model.l1)
        t3 = time.perf_counter()
        timers["compute"] += (t1 - t0) + (t3 - t2) - waited
        timers["data"] += waited
        timers["comm"] += t2 - t1
        counters["rows"] += n_rows
        if timeline.events is not None:
            timeline.add("compute", t0, t1)
            timeline.add("allreduce", t1, t2)
            timeline.add("update", t2, t3)
        loss_sum += float(buf[P])
        epoch_rows += int(count)
        step += 1
        progress.update(step, loss)
        if cfg.train.log_every and step % cfg.train.log_every == 0:
            _log(ctx, {"step": step, "epoch": epoch, "loss": loss, "lr": lr})
        if step % spe == 0 or step == total:   # end of an epoch (or of the run)
            samples += epoch_rows
            record = {"epoch": epoch + 1, "step": step,
                      "train_loss": loss_sum / max(epoch_rows, 1),
                      "epoch_time_s": time.perf_counter() - t_epoch}
            if ctx.n_test:
                record["test"] = evaluate(ctx, theta)
            _log(ctx, record)
            t_line = time.perf_counter()
            progress.epoch_line(record, cfg.train.epochs)
            timers["log"] += time.perf_counter() - t_line
            loss_sum, epoch_rows, t_epoch = 0.0, 0, time.perf_counter()
            if stopper.should_stop(record.get("test")):   # same metrics on every rank
                say(f"mpisgd: early stop after epoch {epoch + 1}: no better held-out "
                    f"{stopper.metric} for {cfg.train.patience} epochs (best "
                    f"{stopper.best:.6g} at epoch {stopper.best_epoch})")
                break
        stop = buf[P + 3] > 0
        since, last_sync = last_sync, step
        if stop or saver.due(step, buf[P + 2] > 0, since) or (step == total and saver.enabled
                                                             and cfg.checkpoint.final):
            t_ck = time.perf_counter()
            path = saver.save_replicated(step, theta, _checkpoint_state(params, reduce, world),
                                         "signal" if stop else "periodic")
            timers["checkpoint"] += time.perf_counter() - t_ck
            timeline.add("checkpoint", t_ck, time.perf_counter())
            if stop:
                progress.close()
                raise Interrupted(f"stopped by a signal after step {step}; checkpoint "
                                  f"written to {path}; rerun with --resume auto "
                                  f"--out {ctx.run_dir} to continue.", agreed=True)
    progress.close()
    samples += epoch_rows
    exchanges = (step - start_step) if averager is None else averager.count
    sent = (averager.buf.nbytes if averager is not None
            else getattr(reduce, "sent_bytes", buf.nbytes))
    if world.Get_size() > 1:   # the logical payload each rank contributed and received
        counters["bytes_sent"] += exchanges * sent
        counters["bytes_received"] += exchanges * sent
    if trace is not None:
        write_trace(ctx, [np.concatenate(v) for _, v in sorted(trace.items())])
    out = {"epochs": -(-step // spe), "steps": step, "steps_per_epoch": spe,
           "global_batch": plan.batch, "samples": samples, "start_step": start_step,
           "train_time_s": time.perf_counter() - t_train}
    if cfg.comm.compression != "none":
        out["compression"] = {"scheme": cfg.comm.compression,
                              "bytes_per_step_dense": buf.nbytes,
                              "bytes_per_step_sent": sent, "ratio": buf.nbytes / sent,
                              "error_feedback": cfg.comm.error_feedback}
    if averager is not None:
        out["local_sgd"] = {"sync_every": cfg.train.sync_every,
                            "averagings": averager.count}
    return out


def make_plan(ctx) -> StepPlan:
    t = ctx.cfg.train
    return StepPlan(n_train=ctx.n_train, first_train=ctx.first_train,
                    train_rows=ctx.train_rows, batch=t.batch_size, seed=t.seed,
                    shuffle=t.shuffle, epochs=t.epochs, max_steps=t.max_steps)


def _log(ctx, record: dict) -> None:
    """Collective: rank 0 appends to metrics.jsonl; a write error is agreed."""
    t0 = time.perf_counter()
    try:
        _append_agreed(ctx, record)
    finally:
        ctx.timers["log"] += time.perf_counter() - t0


def _append_agreed(ctx, record: dict) -> None:
    error = None
    if ctx.topo.rank == 0:
        try:
            runfolder.append_metrics(ctx.run_dir, record)
        except Exception as exc:  # noqa: BLE001 - agreed below
            error = exc
    agree(ctx.topo.world, error)


def write_trace(ctx, trace: list) -> None:
    """Every rank writes the global row ids it used, one array per epoch (test hook)."""
    folder = ctx.run_dir / "trace"
    error = None
    try:
        folder.mkdir(exist_ok=True)
        np.savez(folder / f"rank{ctx.topo.rank}.npz", *trace)
    except OSError as exc:
        error = exc
    agree(ctx.topo.world, error)
    say(f"mpisgd: row trace written to {folder}")

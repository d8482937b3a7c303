"""Allreduce mode: synchronous data parallelism (and ``local``, its one-rank case).

Every rank holds the parameters, computes the gradient sum of its rows of each global
minibatch, and one in-place buffer Allreduce sums [gradient, loss, row count] across
ranks; every rank then applies the same update. The hot loop moves buffers only: no
pickling, no allocation per step beyond the kernel's block buffers.
"""

from __future__ import annotations

import time

import numpy as np

from .. import kernels, runfolder
from ..comm import agree
from ..comm.reduce import BufferAllreduce
from ..data.partition import epoch_permutation, local_schedule, steps_per_epoch
from ..errors import TrainingError
from ..log import say
from ..optim import learning_rate, make_optimizer
from ..progress import Progress


def fit(ctx, theta: np.ndarray) -> dict:
    """Collective over the world: train ``theta`` in place; return run statistics."""
    cfg, world = ctx.cfg, ctx.topo.world
    P = ctx.n_params
    batch = cfg.train.batch_size or ctx.n_train
    batch = min(batch, ctx.n_train)
    spe = steps_per_epoch(ctx.n_train, batch)
    total = cfg.train.epochs * spe
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    optimizer = make_optimizer(cfg.optimizer, P, ctx.dtype)
    buf = np.zeros(P + 2, dtype=ctx.dtype)   # [gradient sum, loss sum, rows]
    grad = buf[:P]
    l2 = ctx.dtype.type(cfg.model.l2)
    mask = ctx.l2_mask
    reduce = BufferAllreduce(world, buf)
    measure_wait = cfg.train.measure_wait and world.Get_size() > 1
    fail_here = cfg.debug.fail_rank == ctx.topo.rank
    trace = [] if cfg.debug.trace_rows else None
    progress = Progress(cfg.output.progress, total, ctx.topo.rank == 0)
    timers = ctx.timers
    step = 0
    samples = 0
    t_train = time.perf_counter()
    epoch = 0
    for epoch in range(cfg.train.epochs):
        if step >= total:
            break
        t_epoch = time.perf_counter()
        perm = (epoch_permutation(ctx.n_train, cfg.train.seed, epoch, cfg.train.shuffle)
                if batch < ctx.n_train else np.empty(0, dtype=np.int64))
        order, offsets = local_schedule(perm if perm.size else
                                        np.arange(ctx.n_train, dtype=np.int64),
                                        ctx.first_train, ctx.train_rows.size, batch)
        rows = ctx.train_rows[order]
        if trace is not None:
            trace.append(rows + ctx.row0)
        loss_sum = 0.0
        epoch_rows = 0
        for t in range(spe):
            if step >= total:
                break
            t0 = time.perf_counter()
            idx = rows[offsets[t]:offsets[t + 1]]
            if fail_here and step == cfg.debug.fail_step:
                raise RuntimeError(f"injected failure in the gradient kernel at step {step} "
                                   f"(debug.fail_rank = {ctx.topo.rank})")
            buf[P] = kernels.loss_grad(ctx.model, ctx.X, ctx.y, idx, theta, grad)
            buf[P + 1] = idx.size
            if measure_wait:  # costs a barrier per step: for profiling only
                t_wait = time.perf_counter()
                world.Barrier()
                timers["wait"] += time.perf_counter() - t_wait
            t1 = time.perf_counter()
            reduce()
            t2 = time.perf_counter()
            count = buf[P + 1]
            grad *= ctx.dtype.type(1.0) / count
            if l2:
                grad[mask] += l2 * theta[mask]
            loss = float(buf[P]) / float(count)
            # The reduced buffer is the same on every rank and NaN/Inf survive any
            # summation order, so every rank takes this branch together: no hang.
            if not (np.isfinite(loss) and np.isfinite(grad).all()):
                raise TrainingError(
                    f"the loss or gradient became NaN/Inf at step {step} (epoch {epoch}); "
                    f"lower optimizer.lr (now {cfg.optimizer.lr:g}) or scale the features.",
                    agreed=True)
            optimizer.step(theta, grad, learning_rate(cfg.optimizer, step, epoch, total))
            t3 = time.perf_counter()
            timers["compute"] += (t1 - t0) + (t3 - t2)
            timers["allreduce"] += t2 - t1
            loss_sum += float(buf[P])
            epoch_rows += int(count)
            step += 1
            progress.update(step, loss)
            if cfg.train.log_every and step % cfg.train.log_every == 0:
                _log(ctx, {"step": step, "epoch": epoch, "loss": loss,
                           "lr": learning_rate(cfg.optimizer, step - 1, epoch, total)})
        samples += epoch_rows
        record = {"epoch": epoch + 1, "step": step,
                  "train_loss": loss_sum / max(epoch_rows, 1),
                  "epoch_time_s": time.perf_counter() - t_epoch}
        if ctx.n_test:
            from ..train import evaluate
            record["test"] = evaluate(ctx, theta)
        _log(ctx, record)
        progress.epoch_line(record, cfg.train.epochs)
    progress.close()
    if trace is not None:
        _write_trace(ctx, trace)
    return {"epochs": epoch + 1, "steps": step, "steps_per_epoch": spe,
            "global_batch": batch, "samples": samples,
            "train_time_s": time.perf_counter() - t_train}


def _log(ctx, record: dict) -> None:
    """Collective: rank 0 appends to metrics.jsonl; a write error is agreed."""
    error = None
    if ctx.topo.rank == 0:
        try:
            runfolder.append_metrics(ctx.run_dir, record)
        except Exception as exc:  # noqa: BLE001 - agreed below
            error = exc
    agree(ctx.topo.world, error)


def _write_trace(ctx, trace: list) -> None:
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

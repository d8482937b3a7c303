"""The step loop of allreduce mode, written once for its two strategies.

A strategy says what a step does once this rank has its gradient: synchronous SGD
(:class:`~mpisgd.modes.allreduce.SyncRunner`) reduces the gradient and updates;
local SGD (:class:`~mpisgd.modes.localsgd.LocalSGDRunner`) updates on its own rows and
averages the parameters every k steps. Everything after an exchange is the same for both
and lives here, so the two cannot drift apart: the accounting (timers, timeline,
counters), step logging, the epoch end (train loss, held-out metrics, metrics.jsonl,
the progress line, the warning of a growing loss, early stopping), checkpoints and stop
requests, the final stats.

The exchange carries, after the gradient or the parameters, a tail of four sums: this
period's loss and rows, rank 0's vote for a timed checkpoint and the stop requests. So
every rank learns the same loss and the same decisions at the same step, with no extra
collective; every decision below is taken on reduced values only, and therefore alike
on every rank.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from mpisgd.comm import agree
from mpisgd.comm.reduce import Reducer
from mpisgd.comm.watchdog import StepWatchdog
from mpisgd.context import Context
from mpisgd.errors import Interrupted
from mpisgd.evaluation import evaluate
from mpisgd.modes.batches import Batches
from mpisgd.modes.common import EarlyStopping, Hooks, Saver, finish_gradient, write_trace
from mpisgd.modes.nodeparams import NodeParams
from mpisgd.optim import clip_factor, sq_norm
from mpisgd.report.advice import LossWatch
from mpisgd.runtime import signals
from mpisgd.runtime.log import say
from mpisgd.runtime.numbers import num
from mpisgd.runtime.progress import Progress
from mpisgd.store import runfolder

# The tail of the exchanged buffer (after the gradient or the parameters), summed.
TAIL = 4
LOSS, ROWS, TIME_VOTE, STOP = range(TAIL)


@dataclass
class Exchanged:
    """What a strategy's step returns. ``t2`` None: a local step, nothing was exchanged
    (local SGD between averagings); otherwise the exchange ran from ``t1`` to ``t2``,
    ``loss`` is the mean loss over the ``rows`` rows it summed, all ranks', and ``lr``
    the step's learning rate."""

    t1: float
    t2: float | None = None
    loss: float = 0.0
    lr: float = 0.0
    rows: float = 0.0


class Runner:
    """Collective over the world: train ``params`` from ``start_step`` to the plan's end.

    Subclasses implement :meth:`advance` (one step after the gradient), :meth:`traffic`
    and :meth:`strategy_stats`. ``buf`` is [gradient, tail]: the gradient is reduced
    (synchronous SGD) or only this rank's (local SGD); the tail holds :data:`TAIL` sums.
    A rank writes its gradient and tail into ``reduce.inbox`` (``grad``, ``tail``) and
    reads the sums from ``reduce.result`` (``reduced``, ``sums``): the same memory as
    ``buf`` but with a direct hierarchical reducer, whose result the node shares.
    """

    def __init__(self, ctx: Context, params: NodeParams, buf: np.ndarray, reduce: Reducer,
                 plan: Batches, dog: StepWatchdog, start_step: int):
        cfg = ctx.cfg
        self.ctx, self.cfg, self.params, self.plan, self.dog = ctx, cfg, params, plan, dog
        self.buf, self.reduce, self.start_step = buf, reduce, start_step
        self.theta = params.theta
        n = ctx.n_params
        inbox, result = (reduce.inbox, reduce.result) if reduce.direct else (buf, buf)
        self.grad, self.tail = inbox[:n], inbox[n:]
        self.reduced, self.sums = result[:n], result[n:]
        self.spe, self.total = plan.steps_per_epoch, plan.total
        self.timers, self.counters, self.timeline = ctx.timers, ctx.counters, ctx.timeline
        self.hooks = Hooks(cfg.debug, ctx.topo.rank, ctx.nan_fired)
        self.saver = Saver(ctx)
        self.stopper = EarlyStopping(cfg.train.patience)
        self.watch = LossWatch(ctx.advice, cfg.optimizer.lr)
        self.trace: dict | None = {} if cfg.debug.trace_rows else None
        self.progress = Progress(cfg.output.progress, plan.total, ctx.topo.rank == 0)
        self.samples = self.epoch_rows = 0
        self.loss_sum = 0.0
        self.last_sync = start_step   # the last step whose tail every rank has seen
        self.t_epoch = 0.0

    # -- what a strategy provides ----------------------------------------------------
    def advance(self, step: int, epoch: int, loss: float, rows: int) -> Exchanged:
        """One step after this rank's gradient of ``rows`` rows (loss sum ``loss``) is in
        ``self.grad``."""
        raise NotImplementedError

    def traffic(self, step: int) -> tuple[int, int]:
        """(exchanges done, logical bytes each rank sent per exchange) at the end."""
        raise NotImplementedError

    def strategy_stats(self, sent: int) -> dict:
        """The strategy's own entries of the stats dict."""
        return {}

    # -- shared by the strategies ------------------------------------------------------
    def vote(self, loss: float, rows: float) -> None:
        """Fill the tail for the next exchange: the period's sums and the two votes."""
        tail = self.tail
        tail[LOSS] = loss
        tail[ROWS] = rows
        tail[TIME_VOTE] = self.saver.time_due()
        tail[STOP] = signals.requested()

    def finish(self, grad: np.ndarray, count: float) -> bool:
        """``grad``, a sum over ``count`` rows -> the mean with its L2 term, clipped.
        Returns whether it is all finite."""
        cfg = self.cfg
        finite = finish_gradient(grad, count, self.theta, cfg.model.l2, self.ctx.l2_mask)
        if cfg.optimizer.clip_norm:
            # A squared norm that overflows gives a NaN factor, and a NaN gradient.
            factor = clip_factor(sq_norm(grad), cfg.optimizer.clip_norm)
            grad *= self.ctx.dtype.type(factor)
            finite = finite and math.isfinite(factor)
        return finite

    def run(self) -> dict:
        """The loop; returns the run statistics (see :meth:`stats`). Raises Interrupted
        (agreed) after a checkpoint when any rank asked to stop."""
        t_train = self.t_epoch = time.perf_counter()
        step = self.start_step
        while step < self.total:
            epoch = step // self.spe
            t0 = time.perf_counter()
            loss, rows, waited = self._gradient(step, epoch)
            done = self.advance(step, epoch, loss, rows)
            if done.t2 is None:
                self._book_local(t0, done.t1, waited, rows)
                step += 1
                continue
            self._book(t0, done, waited, rows)
            self.watch.step(done.loss)
            step += 1
            self.progress.update(step, done.loss)
            every = self.cfg.train.log_every
            if every and step % every == 0:
                _log(self.ctx, {"step": step, "epoch": epoch, "loss": done.loss,
                                "lr": done.lr})
            end_of_epoch = step % self.spe == 0 or step == self.total   # (or of the run)
            if end_of_epoch and self._end_epoch(step, epoch):
                break
            self._checkpoint(step)
        self.progress.close()
        return self.stats(step, t_train)

    def _gradient(self, step: int, epoch: int) -> tuple[float, int, float]:
        """This rank's gradient sum of ``step`` into ``self.grad``: (loss sum, rows,
        seconds waited for data)."""
        self.dog.computing(step)
        self.hooks.before_gradient(step)
        waited = self.plan.wait_s
        loss, rows, ids = self.plan.gradient(step, self.theta, self.grad)
        self.hooks.after_gradient(step, self.grad)
        if self.trace is not None:
            self.trace.setdefault(epoch, []).append(ids)
        return loss, rows, self.plan.wait_s - waited

    def _book_local(self, t0: float, t1: float, waited: float, rows: int) -> None:
        """Timers and counters of a step without an exchange."""
        self.timers["compute"] += t1 - t0 - waited
        self.timers["data"] += waited
        self.counters["rows"] += rows

    def _book(self, t0: float, done: Exchanged, waited: float, rows: int) -> None:
        """Timers, counters and timeline of a step with an exchange (its compute before
        ``t1``, the exchange to ``t2``, the update until now), and the epoch's sums."""
        t1, t2, t3 = done.t1, done.t2, time.perf_counter()
        timers = self.timers
        timers["compute"] += (t1 - t0) + (t3 - t2) - waited
        timers["data"] += waited
        timers["comm"] += t2 - t1
        self.counters["rows"] += rows
        if self.timeline.events is not None:
            self.timeline.add("compute", t0, t1)
            self.timeline.add("allreduce", t1, t2)
            self.timeline.add("update", t2, t3)
        self.loss_sum += float(self.sums[LOSS])
        self.epoch_rows += int(done.rows)

    def _end_epoch(self, step: int, epoch: int) -> bool:
        """Collective: the epoch's record (with held-out metrics) to metrics.jsonl and the
        progress line. True: stop early (the same metrics, so the same answer, on every
        rank)."""
        ctx, cfg = self.ctx, self.cfg
        self.samples += self.epoch_rows
        record = {"epoch": epoch + 1, "step": step,
                  "train_loss": self.loss_sum / max(self.epoch_rows, 1),
                  "epoch_time_s": time.perf_counter() - self.t_epoch}
        if ctx.n_test:
            record["test"] = evaluate(ctx, self.theta)
        _log(ctx, record)
        t_line = time.perf_counter()
        self.progress.epoch_line(record, cfg.train.epochs)
        self.timers["log"] += time.perf_counter() - t_line
        self.watch.epoch(epoch + 1, record["train_loss"])
        self.loss_sum, self.epoch_rows, self.t_epoch = 0.0, 0, time.perf_counter()
        stopper = self.stopper
        if not stopper.should_stop(record.get("test")):
            return False
        say(f"mpisgd: early stop after epoch {epoch + 1}: no better held-out "
            f"{stopper.metric} for {cfg.train.patience} epochs (best "
            f"{num(stopper.best)} at epoch {stopper.best_epoch})")
        return True

    def _checkpoint(self, step: int) -> None:
        """Collective: a checkpoint when one is due, or asked for by a signal; then
        Interrupted (agreed) if a rank asked to stop."""
        stop = self.sums[STOP] > 0
        since, self.last_sync = self.last_sync, step
        final = step == self.total and self.saver.enabled and self.cfg.checkpoint.final
        if not (stop or self.saver.due(step, self.sums[TIME_VOTE] > 0, since) or final):
            return
        t_ck = time.perf_counter()
        path = self.saver.save_replicated(step, self.theta, self._checkpoint_state(),
                                          "signal" if stop else "periodic")
        self.timers["checkpoint"] += time.perf_counter() - t_ck
        self.timeline.add("checkpoint", t_ck, time.perf_counter())
        if stop:
            self.progress.close()
            raise Interrupted(f"stopped by a signal after step {step}; checkpoint "
                              f"written to {path}; rerun with --resume auto "
                              f"--out {self.ctx.run_dir} to continue.", agreed=True)

    def _checkpoint_state(self) -> dict:
        """Collective: the whole-vector optimizer state, plus every rank's error-feedback
        residual (one row per rank) on rank 0."""
        state = self.params.state()
        residual = self.reduce.residual
        if residual is not None:
            rows = self.ctx.topo.world.gather(residual, root=0)
            if rows is not None:
                state["ef_residual"] = np.stack(rows)
        return state

    def stats(self, step: int, t_train: float) -> dict:
        """Collective when tracing rows: count the traffic, write the row trace, and
        return the run statistics."""
        ctx = self.ctx
        self.samples += self.epoch_rows
        exchanges, sent = self.traffic(step)
        if ctx.topo.world.Get_size() > 1:   # the logical payload each rank sent and received
            self.counters["bytes_sent"] += exchanges * sent
            self.counters["bytes_received"] += exchanges * sent
        if self.trace is not None:
            write_trace(ctx, [np.concatenate(v) for _, v in sorted(self.trace.items())])
        out = {"epochs": -(-step // self.spe), "steps": step, "steps_per_epoch": self.spe,
               "global_batch": self.plan.batch, "samples": self.samples,
               "start_step": self.start_step, "train_time_s": time.perf_counter() - t_train}
        out.update(self.strategy_stats(sent))
        return out


def _log(ctx: Context, record: dict) -> None:
    """Collective: rank 0 appends to metrics.jsonl; a write error is agreed."""
    t0 = time.perf_counter()
    try:
        _append_agreed(ctx, record)
    finally:
        ctx.timers["log"] += time.perf_counter() - t0


def _append_agreed(ctx: Context, record: dict) -> None:
    error = None
    if ctx.topo.rank == 0:
        try:
            runfolder.append_metrics(ctx.run_dir, record)
        except Exception as exc:  # noqa: BLE001 - agreed below
            error = exc
    agree(ctx.topo.world, error)

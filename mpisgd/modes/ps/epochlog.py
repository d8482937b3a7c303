"""Rank 0's epoch lines of a parameter-server run (metrics.jsonl and the progress bar),
from the updates its server applies."""

from __future__ import annotations

import time

from mpisgd.context import Context
from mpisgd.report.advice import LossWatch
from mpisgd.runtime.progress import Progress
from mpisgd.store import runfolder


class EpochLog:
    """Rank 0 turns applied updates into epoch lines in metrics.jsonl (and the progress
    bar); other ranks keep nothing."""

    def __init__(self, ctx: Context, plan, start: int):
        self.ctx, self.plan, self.start = ctx, plan, start
        self.enabled = ctx.topo.rank == 0
        self.progress = Progress(ctx.cfg.output.progress, plan.total, self.enabled)
        self.loss, self.rows, self.epochs = 0.0, 0, 0
        self.watch = LossWatch(ctx.advice, ctx.cfg.optimizer.lr)
        self.t_epoch = time.perf_counter()
        self.last_loss = 0.0

    def add(self, loss_sum: float, count: int) -> None:
        """One applied update."""
        if not self.enabled:
            return
        self.loss += loss_sum
        self.rows += count
        self.last_loss = loss_sum / max(count, 1)
        self.watch.step(self.last_loss)

    def advance(self, done: int, counters: dict) -> None:
        """Steps completed: bsp, the steps applied; asp/ssp, the slowest live worker's
        (a dead worker does not hold the epochs back). An epoch line each time another
        steps_per_epoch steps since the start are done (``counters``: the server's)."""
        if not self.enabled:
            return
        spe = self.plan.steps_per_epoch
        steps = done - self.start
        self.progress.update(min(steps, self.plan.total), self.last_loss)
        while steps >= (self.epochs + 1) * spe:
            self.epochs += 1
            record = {"epoch": self.epochs, "step": self.epochs * spe,
                      "train_loss": self.loss / max(self.rows, 1),
                      "epoch_time_s": time.perf_counter() - self.t_epoch,
                      "updates": counters["updates"], "dropped": counters["dropped"]}
            t0 = time.perf_counter()
            runfolder.append_metrics(self.ctx.run_dir, record)
            self.progress.epoch_line(record, self.ctx.cfg.train.epochs)
            self.watch.epoch(self.epochs, record["train_loss"])
            self.ctx.timers["log"] += time.perf_counter() - t0
            self.loss, self.rows, self.t_epoch = 0.0, 0, time.perf_counter()

"""What every mode shares: the step plan and an epoch's length, turning a gradient sum
into an update, the straggler and failure hooks, checkpoint timing and writing
(:class:`Saver`, whose writes are collective), early stopping."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import numpy as np

from mpisgd.comm import agree, bcast_value
from mpisgd.comm.compress import make_codec
from mpisgd.config import to_toml
from mpisgd.context import Context
from mpisgd.data.chunks import chunk_table, chunks_per_step
from mpisgd.data.partition import steps_per_epoch
from mpisgd.errors import MpisgdError, TrainingError
from mpisgd.kernels.finish import finish_mean
from mpisgd.kernels.schedule import EpochSchedule
from mpisgd.runtime.log import say
from mpisgd.store import checkpoint


@dataclass
class StepPlan:
    """This rank's rows of every global step: ``rows_for(step)`` -> local row indices.

    The global minibatch of a step is a function of (seed, epoch, step) only; the plan
    caches one epoch's schedule at a time, so a rank that jumps ahead (a dropped backup
    worker) just asks for a later step.
    """

    n_train: int
    first_train: int
    train_rows: np.ndarray
    batch: int
    seed: int
    shuffle: bool
    epochs: int
    max_steps: int = 0
    block: int = 1          # train.shuffle_block: shuffle runs of this many rows

    def __post_init__(self):
        self.batch = min(self.batch or self.n_train, self.n_train)
        self.steps_per_epoch = steps_per_epoch(self.n_train, self.batch)
        self.total = total_steps(self.epochs, self.max_steps, self.steps_per_epoch)
        self._epoch = -1
        self._rows = self._offsets = None
        self._schedule: EpochSchedule | None = None

    def rows_for(self, step: int) -> np.ndarray:
        epoch, t = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._load(epoch)
        return self._rows[self._offsets[t]:self._offsets[t + 1]]

    def _load(self, epoch: int) -> None:
        if self._schedule is None:
            self._schedule = EpochSchedule(self.n_train, self.first_train, self.train_rows,
                                           self.batch, self.block)
        # Full batch: one step of every local row, whatever the order.
        shuffle = self.shuffle and self.batch < self.n_train
        self._rows, self._offsets = self._schedule.load(self.seed, epoch, shuffle)
        self._epoch = epoch


def gradient_codec(ctx: Context, n: int):
    """The job's codec (``comm.compression``) for gradients of ``n`` entries; None: dense.
    Allreduce mode codes the whole vector, a PS worker each server's key range."""
    comm = ctx.cfg.comm
    return make_codec(comm.compression, n, ctx.dtype, comm.topk_ratio, ctx.cfg.train.seed)


def finish_gradient(grad: np.ndarray, count: float, theta: np.ndarray, l2: float,
                    mask: np.ndarray) -> bool:
    """Sum over rows -> mean, plus the L2 term on weights; in place, in one compiled pass
    (:func:`mpisgd.kernels.finish.finish_mean`). Returns whether it is all finite.

    ``grad``, ``theta`` and ``mask`` may be the same contiguous slice of the full vectors
    (a parameter server's key range): the rule is elementwise, so sharding is exact.
    """
    return finish_mean(grad, count, theta, l2, mask)


def check_finite(loss: float, grad: np.ndarray, step: int, lr: float, *,
                 agreed: bool = True) -> None:
    """Raise TrainingError if the loss or the gradient is NaN/Inf.

    ``agreed``: every rank sees the same values and raises together (allreduce);
    otherwise the error is this rank's alone and must abort the job.
    """
    if not (np.isfinite(loss) and np.isfinite(grad).all()):
        raise diverged(step, lr, agreed=agreed)


def diverged(step: int, lr: float, *, agreed: bool = True) -> TrainingError:
    """The error of a NaN/Inf loss or gradient at ``step`` (see :func:`check_finite`)."""
    return TrainingError(f"the loss or gradient became NaN/Inf at step {step}; lower "
                         f"optimizer.lr (now {lr:g}) or scale the features.", agreed=agreed)


class Hooks:
    """Test and benchmark hooks from [debug]: a slow rank and an injected failure."""

    def __init__(self, debug, rank: int, nan_fired: set[int]):
        self.slow_s = debug.slow_ms / 1000.0 if debug.slow_rank == rank else 0.0
        self.fail_step = debug.fail_step if debug.fail_rank == rank else -1
        self.nan = debug.fail_kind == "nan"
        self.kill = debug.fail_kind == "kill"
        self.nan_fired = nan_fired
        self.signal_step = debug.signal_step if debug.signal_rank == rank else -1
        self.rank = rank

    def signal_at(self, step: int) -> None:
        """``signal_rank``: this rank alone gets SIGTERM once it reaches ``signal_step``
        (the others learn of it only through the protocol, as when a signal reaches the
        ranks at different moments)."""
        if 0 <= self.signal_step <= step:
            self.signal_step = -1
            os.kill(os.getpid(), signal.SIGTERM)

    def before_gradient(self, step: int) -> None:
        self.signal_at(step)
        if self.slow_s:
            time.sleep(self.slow_s)
        if step == self.fail_step and not self.nan and not self.kill:
            raise RuntimeError(f"injected failure in the gradient kernel at step {step} "
                               f"(debug.fail_rank = {self.rank})")

    def after_gradient(self, step: int, grad: np.ndarray) -> None:
        """``fail_kind = "nan"``: this rank's gradient of ``fail_step`` is NaN, once per
        run (a transient fault: a rollback's fresh Hooks share ``nan_fired`` and replay
        the step cleanly)."""
        if step == self.fail_step and self.kill:   # a death with the step computed
            os.kill(os.getpid(), signal.SIGKILL)
        if step == self.fail_step and self.nan and step not in self.nan_fired:
            self.nan_fired.add(step)
            grad[0] = np.nan


class Saver:
    """When to checkpoint, and writing one: replicated (allreduce) or sharded (servers)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        c = ctx.cfg.checkpoint
        self.every_steps, self.every_seconds, self.keep = c.every_steps, c.every_seconds, c.keep
        self.enabled = bool(c.every_steps or c.every_seconds)
        self.last = time.monotonic()
        # Only rank 0 votes on time, so the decision does not depend on clock skew.
        self.votes = self.every_seconds > 0 and ctx.topo.rank == 0

    def time_due(self) -> float:
        """Rank 0's vote (1.0/0.0) that every_seconds have passed since the last one."""
        return float(self.votes and time.monotonic() - self.last >= self.every_seconds)

    def due(self, step: int, time_vote: bool, since: int | None = None) -> bool:
        """A checkpoint at ``step``: a multiple of every_steps was reached (in (since,
        step] when steps are only synchronised every few), or the time vote says so."""
        if since is None:
            since = step - 1
        every = self.every_steps
        return bool((every and step // every > since // every) or time_vote)

    def meta(self, step: int, reason: str) -> dict:
        ctx, cfg = self.ctx, self.ctx.cfg
        return {"reason": reason, "epoch": step // epoch_length(ctx)[0],
                "mode": cfg.mode, "consistency": cfg.ps.consistency if cfg.mode == "ps" else None,
                "world_size": ctx.topo.size, "servers": len(ctx.roles.servers),
                "model": ctx.model, "n_features": ctx.n_features, "n_classes": ctx.n_classes,
                "n_params": ctx.n_params, "dtype": str(ctx.dtype), "seed": cfg.train.seed,
                "config": to_toml(cfg)}

    def save_replicated(self, step: int, theta: np.ndarray, state: dict, reason: str):
        """Collective over the world: rank 0 writes the whole vector; errors agreed."""
        def write():
            staging = checkpoint.staging_dir(self.ctx.run_dir, step, self.ctx.run_token)
            entry = checkpoint.write_shard(staging, 0, 0, theta.size, theta, state)
            return checkpoint.commit(self.ctx.run_dir, staging, step, [entry],
                                     self.meta(step, reason), self.keep)

        path = bcast_value(self.ctx.topo.world, write)
        self.last = time.monotonic()
        return path

    def save_sharded(self, comm, index: int, lo: int, hi: int, theta_slice: np.ndarray,
                     state: dict, step: int, reason: str):
        """Collective over the servers' communicator: each writes its key range, server 0
        commits the manifest. An error here is not agreed with the waiting workers, so it
        is re-raised as this rank's own (the job aborts)."""
        error, entry = None, None
        staging = checkpoint.staging_dir(self.ctx.run_dir, step, self.ctx.run_token)
        try:
            entry = checkpoint.write_shard(staging, index, lo, hi, theta_slice, state)
        except Exception as exc:  # noqa: BLE001 - agreed below
            error = exc
        entries = comm.gather(entry, root=0)
        path = None
        if comm.Get_rank() == 0 and error is None and None not in entries:
            try:
                path = checkpoint.commit(self.ctx.run_dir, staging, step, entries,
                                         self.meta(step, reason), self.keep)
            except Exception as exc:  # noqa: BLE001 - agreed below
                error = exc
        try:
            agree(comm, error)
        except MpisgdError as exc:
            exc.agreed = False
            raise
        self.last = time.monotonic()
        return comm.bcast(path, root=0)


def epoch_length(ctx: Context) -> tuple[int, int]:
    """(steps per epoch, nominal global batch in rows) under the job's placement: the one
    place an epoch's length is computed (the step plan, the chunk batches, checkpoint
    manifests and the summary all take it from here).

    Partition placement steps through the training rows in minibatches of
    ``train.batch_size`` rows; storage and server placement through the dataset's
    chunks, a whole number of chunks per step.
    """
    cfg, t = ctx.cfg, ctx.cfg.train
    if cfg.data.placement == "partition":
        batch = min(t.batch_size or ctx.n_train, ctx.n_train)
        return steps_per_epoch(ctx.n_train, batch), batch
    table = chunk_table(ctx.info.offsets, cfg.data.chunk_rows, ctx.info.nodes)
    per_step = chunks_per_step(table.n, t.batch_size, cfg.data.chunk_rows)
    return -(-table.n // per_step), per_step * cfg.data.chunk_rows


def total_steps(epochs: int, max_steps: int, steps_per_epoch: int) -> int:
    """Steps of the whole run: ``epochs`` epochs, at most ``max_steps`` (0: no limit)."""
    total = epochs * steps_per_epoch
    return min(total, max_steps) if max_steps else total


class EarlyStopping:
    """Stop when the held-out loss (MSE, or log-loss) has not improved for ``patience``
    epochs. Fed the metrics every rank computed from the same reduced sums, so every
    rank decides alike."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = float("inf")
        self.best_epoch = 0
        self.epochs = 0
        self.metric = ""

    def should_stop(self, test: dict | None) -> bool:
        self.epochs += 1
        if not self.patience or not test:
            return False
        self.metric = "mse" if "mse" in test else "log_loss"
        value = test[self.metric]
        if value < self.best:
            self.best, self.best_epoch = value, self.epochs
        return self.epochs - self.best_epoch >= self.patience


def make_plan(ctx: Context) -> StepPlan:
    t = ctx.cfg.train
    return StepPlan(n_train=ctx.n_train, first_train=ctx.first_train,
                    train_rows=ctx.train_rows, batch=t.batch_size, seed=t.seed,
                    shuffle=t.shuffle, epochs=t.epochs, max_steps=t.max_steps,
                    block=max(1, t.shuffle_block))


def write_trace(ctx: Context, trace: list) -> None:
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

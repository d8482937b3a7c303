"""What every mode shares: the step plan, turning a gradient sum into an update, the
straggler and failure hooks. Pure numpy over this rank's arrays; no communication."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import numpy as np

from mpisgd.data.partition import epoch_permutation, local_schedule, steps_per_epoch
from mpisgd.store import checkpoint
from mpisgd.errors import MpisgdError, TrainingError


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

    def __post_init__(self):
        self.batch = min(self.batch or self.n_train, self.n_train)
        self.steps_per_epoch = steps_per_epoch(self.n_train, self.batch)
        total = self.epochs * self.steps_per_epoch
        self.total = min(total, self.max_steps) if self.max_steps else total
        self._epoch = -1
        self._rows = self._offsets = None

    def rows_for(self, step: int) -> np.ndarray:
        epoch, t = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._load(epoch)
        return self._rows[self._offsets[t]:self._offsets[t + 1]]

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """Every local row the epoch uses, in step order (for the row trace)."""
        if epoch != self._epoch:
            self._load(epoch)
        return self._rows

    def _load(self, epoch: int) -> None:
        if self.batch < self.n_train:
            perm = epoch_permutation(self.n_train, self.seed, epoch, self.shuffle)
        else:  # full batch: the order within the one step does not matter
            perm = np.arange(self.n_train, dtype=np.int64)
        order, self._offsets = local_schedule(perm, self.first_train, self.train_rows.size,
                                              self.batch)
        self._rows = self.train_rows[order]
        self._epoch = epoch


def gradient_codec(ctx, n: int):
    """The job's codec (``comm.compression``) for gradients of ``n`` entries; None: dense.
    Allreduce mode codes the whole vector, a PS worker each server's key range."""
    from mpisgd.comm.compress import make_codec

    comm = ctx.cfg.comm
    return make_codec(comm.compression, n, ctx.dtype, comm.topk_ratio, ctx.cfg.train.seed)


def finish_gradient(grad: np.ndarray, count: float, theta: np.ndarray, l2: float,
                    mask: np.ndarray) -> None:
    """Sum over rows -> mean, plus the L2 term on weights; in place.

    ``grad``, ``theta`` and ``mask`` may be the same contiguous slice of the full vectors
    (a parameter server's key range): the rule is elementwise, so sharding is exact.
    """
    grad *= grad.dtype.type(1.0) / grad.dtype.type(count)
    if l2:
        grad[mask] += grad.dtype.type(l2) * theta[mask]


def check_finite(loss: float, grad: np.ndarray, step: int, lr: float, *,
                 agreed: bool = True) -> None:
    """Raise TrainingError if the loss or the gradient is NaN/Inf.

    ``agreed``: every rank sees the same values and raises together (allreduce);
    otherwise the error is this rank's alone and must abort the job.
    """
    if not (np.isfinite(loss) and np.isfinite(grad).all()):
        raise TrainingError(
            f"the loss or gradient became NaN/Inf at step {step}; lower optimizer.lr "
            f"(now {lr:g}) or scale the features.", agreed=agreed)


class Hooks:
    """Test and benchmark hooks from [debug]: a slow rank and an injected failure."""

    def __init__(self, debug, rank: int, nan_fired: set[int]):
        self.slow_s = debug.slow_ms / 1000.0 if debug.slow_rank == rank else 0.0
        self.fail_step = debug.fail_step if debug.fail_rank == rank else -1
        self.nan = debug.fail_kind == "nan"
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
        if step == self.fail_step and not self.nan:
            raise RuntimeError(f"injected failure in the gradient kernel at step {step} "
                               f"(debug.fail_rank = {self.rank})")

    def after_gradient(self, step: int, grad: np.ndarray) -> None:
        """``fail_kind = "nan"``: this rank's gradient of ``fail_step`` is NaN, once per
        run (a transient fault: a rollback's fresh Hooks share ``nan_fired`` and replay
        the step cleanly)."""
        if step == self.fail_step and self.nan and step not in self.nan_fired:
            self.nan_fired.add(step)
            grad[0] = np.nan


class Saver:
    """When to checkpoint, and writing one: replicated (allreduce) or sharded (servers)."""

    def __init__(self, ctx):
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
        from mpisgd.config import to_toml

        return {"reason": reason, "epoch": step // max(1, _steps_per_epoch(ctx)),
                "mode": cfg.mode, "consistency": cfg.ps.consistency if cfg.mode == "ps" else None,
                "world_size": ctx.topo.size, "servers": len(ctx.roles.servers),
                "model": ctx.model, "n_features": ctx.n_features, "n_classes": ctx.n_classes,
                "n_params": ctx.n_params, "dtype": str(ctx.dtype), "seed": cfg.train.seed,
                "config": to_toml(cfg)}

    def save_replicated(self, step: int, theta: np.ndarray, state: dict, reason: str):
        """Collective over the world: rank 0 writes the whole vector; errors agreed."""
        from mpisgd.comm import bcast_value

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
        from mpisgd.comm import agree

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


def _steps_per_epoch(ctx) -> int:
    t = ctx.cfg.train
    batch = min(t.batch_size or ctx.n_train, ctx.n_train)
    return steps_per_epoch(ctx.n_train, batch)


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

"""What every mode shares: the step plan, turning a gradient sum into an update, the
straggler and failure hooks. Pure numpy over this rank's arrays; no communication."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..data.partition import epoch_permutation, local_schedule, steps_per_epoch
from ..errors import TrainingError


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

    def __init__(self, debug, rank: int):
        self.slow_s = debug.slow_ms / 1000.0 if debug.slow_rank == rank else 0.0
        self.fail_step = debug.fail_step if debug.fail_rank == rank else -1
        self.rank = rank

    def before_gradient(self, step: int) -> None:
        if self.slow_s:
            time.sleep(self.slow_s)
        if step == self.fail_step:
            raise RuntimeError(f"injected failure in the gradient kernel at step {step} "
                               f"(debug.fail_rank = {self.rank})")

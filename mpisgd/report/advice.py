"""Warnings about a run that trains but goes wrong: a loss that grows instead of falling,
a minibatch larger than the data, a classifier worse than always answering the most
frequent class. None of these stops the job (the run may be what the user wanted);
each is said once, on stderr, and kept for summary.json's ``warnings``.

The decisions are pure functions of numbers every rank holds alike (the reduced
losses, the job, the reduced class counts), so every rank's :class:`Advice` holds the
same records; rank 0 prints them.
"""

from __future__ import annotations

from mpisgd.runtime.log import warn
from mpisgd.runtime.numbers import num

# An epoch's mean training loss this many times the loss at the starting parameters
# means the iteration is unstable. Minibatch noise, momentum overshoot or a warm-up
# raise the loss by a small factor at most; two orders of magnitude take the
# parameters moving away from the optimum step after step (for a squared loss, an
# error ten times the starting one), which a smaller step or scaled features cure.
# The check runs once per epoch, so a run diverging this far is told within an epoch.
GROWTH = 100.0


class Advice:
    """The run's warnings, each kind once: ``records`` go to summary.json."""

    def __init__(self):
        self.records: list[dict] = []

    def kinds(self) -> list[str]:
        return [r["kind"] for r in self.records]

    def add(self, kind: str, message: str, **numbers) -> None:
        """Every rank: record a warning of ``kind`` (a repeat is dropped); rank 0 prints
        it."""
        if kind in self.kinds():
            return
        warn(message)
        self.records.append({"kind": kind, "message": message, **numbers})


class LossWatch:
    """Compares each epoch's mean training loss with the loss at the start.

    The start is the mean loss of the first step the run takes (or resumes with),
    computed at the starting parameters before they change: one minibatch, but its
    noise is far below the factor :data:`GROWTH`.
    """

    def __init__(self, advice: Advice, lr: float):
        self.advice, self.lr = advice, lr
        self.start: float | None = None

    def step(self, loss: float) -> None:
        """The mean loss of a step; the first one is the start."""
        if self.start is None:
            self.start = float(loss)

    def epoch(self, epoch: int, loss: float) -> None:
        """Warn (once) when epoch ``epoch``'s mean training loss left the start behind."""
        message = divergence_message(self.start, loss, epoch, self.lr)
        if message:
            self.advice.add("divergence", message, epoch=epoch, start_loss=self.start,
                            train_loss=float(loss), lr=self.lr)


def divergence_message(start: float | None, loss: float, epoch: int, lr: float) -> str | None:
    """The warning when ``loss`` exceeds :data:`GROWTH` times ``start``, else None. A
    start of 0 (a perfect fit before training) gives no scale to compare with."""
    if start is None or not start > 0.0 or not loss > GROWTH * start:
        return None
    return (f"the training loss grew from {num(start)} at the start to {num(loss)} in epoch "
            f"{epoch} ({num(loss / start, 3)} times): the steps overshoot. Lower "
            f"optimizer.lr (now {num(lr)}; try {num(lr / 10)}), or set data.standardize = "
            f"true if the features have very different scales.")


def batch_message(batch_size: int, n_train: int) -> str | None:
    """The warning when the global minibatch ``train.batch_size`` exceeds the training
    rows (0 asks for full-batch steps on purpose), else None."""
    if not batch_size > n_train > 0:
        return None
    return (f"train.batch_size = {batch_size} exceeds the {n_train} training rows: one step "
            f"per epoch, each on every row (full-batch gradient descent), so "
            f"train.epochs = N takes only N steps. Set train.batch_size below {n_train} for "
            f"minibatch SGD (e.g. {_suggested_batch(n_train)}), or 0 to ask for full batches.")


def _suggested_batch(n_train: int) -> int:
    """A power of two giving about 8 steps or more per epoch (at least 1)."""
    batch = 1
    while batch * 2 * 8 <= n_train:
        batch *= 2
    return batch


def majority_message(accuracy: float, support: list[int], rows: str) -> str | None:
    """The warning when ``accuracy`` is below the share of the most frequent class in
    ``support`` (rows per true class), else None. ``rows``: "test" or "training"."""
    n = sum(support)
    if not n:
        return None
    rate = max(support) / n
    if not accuracy < rate:
        return None
    label = max(range(len(support)), key=lambda c: support[c])
    other = " or the test rows differ from the training rows" if rows == "test" else ""
    return (f"the {rows} accuracy {num(accuracy, 4)} is below the majority-class rate "
            f"{num(rate, 4)} of the same {n} rows (class {label}): always answering class "
            f"{label} would score better. The model has not learned (try more train.epochs, "
            f"another optimizer.lr, data.standardize = true){other}.")

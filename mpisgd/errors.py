"""The error hierarchy: what a caller would catch, and how the CLI reports it."""

from __future__ import annotations


class MpisgdError(Exception):
    """Base of every error mpisgd raises on purpose.

    ``user_error`` errors are the user's to fix (bad config, bad data): the CLI
    prints their message without a traceback unless ``--debug`` is given.
    ``agreed`` is set when every rank raised the same error after a collective
    agreement, so the job can exit cleanly instead of aborting.
    """

    user_error = True
    exit_code = 2

    def __init__(self, message: str, *, agreed: bool = False):
        super().__init__(message)
        self.agreed = agreed


class ConfigError(MpisgdError, ValueError):
    """The job configuration (file, --set override, world size) is invalid."""


class DataError(MpisgdError, ValueError):
    """A dataset is missing, unreadable, or violates the on-disk format."""


class CommError(MpisgdError, RuntimeError):
    """Ranks disagree or a communication step failed."""

    user_error = False
    exit_code = 3


class TrainingError(MpisgdError, RuntimeError):
    """Training produced an unusable state (NaN/Inf loss or gradient)."""

    exit_code = 4


class OutputError(MpisgdError, OSError):
    """The run folder or an output file cannot be written."""


class CheckpointError(MpisgdError, RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


class Interrupted(MpisgdError):
    """SIGTERM/SIGUSR1 stopped training after a checkpoint; requeue and ``--resume auto``.

    Exit code 75 (EX_TEMPFAIL): the batch scripts requeue the job on this code.
    """

    user_error = True
    exit_code = 75

"""Training: prepare a run (data, context), fit with the job's mode, evaluate, save."""

from mpisgd.train.prepare import prepare
from mpisgd.train.run import run

__all__ = ["prepare", "run"]

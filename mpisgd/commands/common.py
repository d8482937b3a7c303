"""What every collective command shares: argument parsing, loading the job, the world.

Every rank parses the same argv and reads the same job file, so a bad flag or key is
the same verdict everywhere: an agreed ConfigError (printed once by rank 0), never a
usage message from every rank and a scattered exit.
"""

from __future__ import annotations

import argparse
from typing import Callable

from mpi4py import MPI

from mpisgd.comm import Topology, make_topology
from mpisgd.config import JobConfig, load_config
from mpisgd.errors import ConfigError
from mpisgd.runtime import signals
from mpisgd.runtime.resources import rank_threads


class ArgParser(argparse.ArgumentParser):
    """argparse that raises an agreed ConfigError (every rank parses the same argv)
    instead of printing usage on every rank and exiting."""

    def error(self, message: str):
        raise ConfigError(f"{message} (usage: {self.usage})", agreed=True)

    def print_help(self, file=None):
        # Every rank parses the same arguments: one copy of the help is enough.
        if MPI.COMM_WORLD.Get_rank() == 0:
            super().print_help(file)


def load_job(job: str | None, overrides: list[str], out: str | None = None) -> JobConfig:
    """The job file with its overrides; a ConfigError is agreed (every rank read the
    same file and flags: same verdict)."""
    try:
        return load_config(job, overrides, out=out)
    except ConfigError as exc:
        exc.agreed = True
        raise


def on_world(body: Callable[[Topology], object], ranks_per_node: int = 0, *,
             stoppable: bool = False) -> int:
    """Collective: run ``body(topo)`` with this rank's numba threads; free after.

    ``stoppable``: SIGTERM/SIGUSR1 become a stop request the training loop answers with
    a checkpoint (Slurm pre-emption), not the end of the process.
    """
    if stoppable:
        signals.install()
    topo = make_topology(ranks_per_node)
    with rank_threads(topo.local_size):
        body(topo)
    topo.free()
    return 0

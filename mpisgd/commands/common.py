"""What every collective command shares: argument parsing, loading the job, the run
folder, the world.

Every rank parses the same argv and reads the same job file, so a bad flag or key is
the same verdict everywhere: an agreed ConfigError (printed once by rank 0), never a
usage message from every rank and a scattered exit.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Callable

from mpi4py import MPI

from mpisgd.comm import Topology, bcast_value, make_topology
from mpisgd.config import JobConfig, load_config
from mpisgd.errors import ConfigError
from mpisgd.runtime import log, signals
from mpisgd.runtime.resources import rank_threads
from mpisgd.store import runfolder


class ArgParser(argparse.ArgumentParser):
    """argparse that raises an agreed ConfigError (every rank parses the same argv)
    instead of printing usage on every rank and exiting."""

    def error(self, message: str):
        raise ConfigError(f"{message} (usage: {self.usage})", agreed=True)

    def print_help(self, file=None):
        # Every rank parses the same arguments: one copy of the help is enough.
        if MPI.COMM_WORLD.Get_rank() == 0:
            super().print_help(file)


def add_job_arguments(p: ArgParser, out_help: str) -> None:
    """The arguments of every command that runs a job: the job file, --set, --out,
    --overwrite, --verbose, --debug."""
    p.add_argument("job", nargs="?", help="job file (TOML); default: the built-in example")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a job key, e.g. optimizer.lr=0.05 "
                                             "(every key: docs/jobs.md)")
    p.add_argument("--out", metavar="DIR", help=out_help)
    p.add_argument("--overwrite", action="store_true",
                   help="--out names the folder of an earlier run: delete that run's files "
                        "(checkpoints included) first")
    p.add_argument("--verbose", action="store_true",
                   help="also print each rank's process id and the memory per node")
    p.add_argument("--debug", action="store_true", help="show tracebacks for every error")


def load_job(job: str | None, overrides: list[str], out: str | None = None) -> JobConfig:
    """The job file with its overrides; a ConfigError is agreed (every rank read the
    same file and flags: same verdict)."""
    try:
        return load_config(job, overrides, out=out)
    except ConfigError as exc:
        exc.agreed = True
        raise


def claim_out(topo: Topology, out: str | None, *, resume: str | None = None,
              overwrite: bool = False) -> None:
    """Collective: the output folder ``out`` (--out or output.dir; empty: a new folder)
    may hold an earlier run only when resumed (--resume) or replaced (--overwrite); with
    --overwrite its files are deleted first. Agreed errors."""
    if resume and overwrite:
        raise ConfigError("--overwrite deletes the run that --resume continues: give one "
                          "of them.", agreed=True)
    if out:
        bcast_value(topo.world, lambda: runfolder.claim(out, resume=bool(resume),
                                                        overwrite=overwrite))


def on_world(body: Callable[[Topology], object], ranks_per_node: int = 0, *,
             stoppable: bool = False, verbose: bool = False) -> int:
    """Collective: run ``body(topo)`` with this rank's numba threads; free after.

    ``stoppable``: SIGTERM/SIGUSR1 and Ctrl-C (SIGINT) become a stop request the
    training loop answers with a checkpoint (Slurm pre-emption), not the end of the
    process. ``verbose``: --verbose (the detail lines of :mod:`mpisgd.runtime.log`).
    """
    log.set_verbose(verbose)
    with signals.stop_requests() if stoppable else contextlib.nullcontext():
        topo = make_topology(ranks_per_node)
        with rank_threads(topo.local_size):
            body(topo)
        topo.free()
    return 0

"""Command line: parse, run, and turn any failure on any rank into one clear ending.

    python -m mpisgd [train] [JOB.toml] [--set key=value ...] [--out DIR] [--resume auto|PATH]
    python -m mpisgd solve JOB.toml ...        the exact least-squares (ridge) optimum
    python -m mpisgd cv JOB.toml --folds K     k-fold cross-validation
    python -m mpisgd eval MODEL.h5 --data PATH / predict MODEL.h5 --data PATH --out PRED.h5
    python -m mpisgd data {synth,convert,info} ...
    python -m mpisgd info

An error every rank agreed on (bad config, bad data) is printed once by rank 0 and
every rank exits with the same code. Any other exception is printed by the rank that
raised it, naming that rank, and the whole job is aborted: otherwise the other ranks
would wait for it in a collective until the allocation runs out.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from mpisgd.errors import Interrupted, MpisgdError
from mpisgd.runtime.launch_env import tune_for_oversubscription
from mpisgd.runtime.paths import set_numba_cache_dir
from mpisgd.runtime.supervise import supervise

# Commands, imported only when they run: the entry must set the supervisor, numba's
# cache folder and the MPI environment before MPI or numba start, and data, plot and
# compare must not start MPI at all. (module, function) per name.
COLLECTIVE = {
    "train": ("mpisgd.commands.train", "train_main"),
    "solve": ("mpisgd.commands.train", "solve_main"),
    "cv": ("mpisgd.commands.cv", "main"),
    "eval": ("mpisgd.commands.predict", "eval_main"),
    "predict": ("mpisgd.commands.predict", "predict_main"),
}
LOCAL = {   # one process, no mpiexec needed
    "data": ("mpisgd.commands.data", "main"),
    "info": ("mpisgd.commands.info", "main"),
    "plot": ("mpisgd.commands.plot", "main"),
    "compare": ("mpisgd.commands.plot", "main"),
}


def _command(module: str, name: str):
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LOCAL:
        set_numba_cache_dir()
        # plot and compare read their own name (one parser, two commands)
        args = argv if argv[0] in ("plot", "compare") else argv[1:]
        return _command(*LOCAL[argv[0]])(args)
    supervise()   # before MPI starts: a rank killed by a signal is then named (see there)
    set_numba_cache_dir()
    tune_for_oversubscription()
    return run_collective(*collective_command(argv))


def collective_command(argv: list[str]):
    """(command, its arguments) of a command that runs on every rank: train (the
    default), solve, eval, predict or cv."""
    if argv and argv[0] in COLLECTIVE:
        return _command(*COLLECTIVE[argv[0]]), argv[1:]
    return _command(*COLLECTIVE["train"]), argv


def run_collective(command, argv: list[str]) -> int:
    """Every rank: run ``command(argv)`` with the job's error discipline.

    An agreed error is printed once by rank 0 and every rank returns its code; any
    other exception on any rank is printed by that rank and aborts the whole job. Can
    run several jobs one after the other in one MPI world (each job duplicates the
    world communicator): the test suite's job pool does.
    """
    from mpi4py import MPI  # initialises MPI; every rank runs the lines below

    debug = "--debug" in argv
    rank = MPI.COMM_WORLD.Get_rank()
    try:
        return command(argv)
    except SystemExit as exc:   # --help: every rank parsed the same arguments and exits alike
        sys.stdout.flush()
        return exc.code if isinstance(exc.code, int) else 0
    except MpisgdError as exc:
        if exc.agreed:
            if rank == 0:
                if debug:
                    traceback.print_exc()
                kind = "stopped" if isinstance(exc, Interrupted) else "error"
                sys.stderr.write(f"mpisgd: {kind}: {exc}\n")
                sys.stderr.flush()
            return exc.exit_code
        if debug:
            traceback.print_exc()
        from mpisgd.comm import abort_job

        abort_job(str(exc) if exc.user_error else f"{exc} ({_where(exc)})", exc.exit_code)
    except BaseException as exc:  # noqa: BLE001 - anything else ends the whole job
        from mpisgd.comm import abort_job

        if isinstance(exc, KeyboardInterrupt):
            abort_job("interrupted", 130)
        if debug:
            traceback.print_exc()
        abort_job(f"{type(exc).__name__}: {exc} ({_where(exc)}; --debug prints the "
                  f"traceback)", 1)
    return 1  # not reached: abort_job does not return


def _where(exc: BaseException) -> str:
    """Where an unexpected exception was raised: the innermost frame, as file:line."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "no traceback"
    code = tb.tb_frame.f_code
    path = code.co_filename
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if path.startswith(root + os.sep):
        path = os.path.relpath(path, root)
    return f"raised at {path}:{tb.tb_lineno} in {code.co_name}"

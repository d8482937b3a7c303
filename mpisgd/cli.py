"""Command line: parse, run, and turn any failure on any rank into one clear ending.

    python -m mpisgd [train] [JOB.toml] [--set key=value ...] [--out DIR] [--resume auto|PATH]
    python -m mpisgd solve JOB.toml ...        the exact least-squares (ridge) optimum
    python -m mpisgd cv JOB.toml --folds K     k-fold cross-validation
    python -m mpisgd eval MODEL.h5 --data PATH / predict MODEL.h5 --data PATH --out PRED.h5
    python -m mpisgd data {synth,convert,info} ...
    python -m mpisgd launch -n N [--max-restarts K] -- JOB.toml ...   mpiexec, relaunched
    python -m mpisgd info | plot | compare | help [COMMAND] | --help | --version

An error every rank agreed on (bad config, bad data) is printed once by rank 0 and
every rank exits with the same code. Any other exception is printed by the rank that
raised it, naming that rank, and the whole job is aborted: otherwise the other ranks
would wait for it in a collective until the allocation runs out.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import traceback
from typing import NamedTuple

from mpisgd import __version__
from mpisgd.errors import Interrupted, MpisgdError
from mpisgd.runtime.launch_env import tune_for_oversubscription
from mpisgd.runtime.paths import set_numba_cache_dir
from mpisgd.runtime.supervise import launcher_rank, supervise


class Command(NamedTuple):
    module: str
    function: str
    summary: str   # the line of `mpisgd --help`


# Commands, imported only when they run: the entry must set the supervisor, numba's
# cache folder and the MPI environment before MPI or numba start, and data, plot and
# compare must not start MPI at all; `mpisgd --help` starts neither.
COLLECTIVE = {
    "train": Command("mpisgd.commands.train", "train_main",
                     "fit a job (the default command: `mpisgd JOB.toml` trains JOB.toml)"),
    "solve": Command("mpisgd.commands.train", "solve_main",
                     "the exact least-squares (ridge) optimum of a linear job"),
    "cv": Command("mpisgd.commands.cv", "main",
                  "k-fold cross-validation: train and test every fold in turn"),
    "eval": Command("mpisgd.commands.predict", "eval_main",
                    "metrics of a trained model (model.h5) on a dataset"),
    "predict": Command("mpisgd.commands.predict", "predict_main",
                       "predictions of a trained model for every row of a dataset"),
}
LOCAL = {   # one process, no mpiexec needed
    "data": Command("mpisgd.commands.data", "main",
                    "make, convert and inspect datasets: data synth | convert | info"),
    "info": Command("mpisgd.commands.info", "main",
                    "versions of MPI, mpi4py, numba, HDF5; numba threads and cache"),
    "plot": Command("mpisgd.commands.plot", "main",
                    "figures of a run folder: loss and held-out metrics, time split"),
    "compare": Command("mpisgd.commands.plot", "main",
                       "several run folders on one figure and in one table"),
    "launch": Command("mpisgd.commands.launch", "main",
                      "run a job under mpiexec and relaunch it from its checkpoint when "
                      "it fails"),
}
HELP = ("-h", "--help", "help")


def _command(entry: Command):
    return getattr(importlib.import_module(entry.module), entry.function)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argv[0] if argv else ""
    if first in HELP:
        return help_main(argv[1:])
    if first == "--version":
        _print(f"mpisgd {__version__}")
        return 0
    if first in LOCAL:
        # launch compiles nothing, and its environment goes to every rank on every node:
        # a cache folder named after its own host would be shared by all of them.
        if first != "launch":
            set_numba_cache_dir()
        # plot and compare read their own name (one parser, two commands)
        args = argv if first in ("plot", "compare") else argv[1:]
        return _command(LOCAL[first])(args)
    if first and not first.startswith("-") and first not in COLLECTIVE \
            and not first.endswith(".toml") and not os.path.exists(first):
        return _unknown(first)
    supervise()   # before MPI starts: a rank killed by a signal is then named (see there)
    set_numba_cache_dir()
    tune_for_oversubscription()
    return run_collective(*collective_command(argv))


def help_main(argv: list[str]) -> int:
    """``mpisgd --help``: every command with one line; ``mpisgd help CMD``: CMD --help.
    Starts neither MPI nor numba (the collective commands' own help does)."""
    if not argv:
        _print(overview())
        return 0
    if argv[0] in COLLECTIVE or argv[0] in LOCAL:
        return main([argv[0], "--help"])
    return _unknown(argv[0])


def overview() -> str:
    """The text of ``mpisgd --help``."""
    def rows(table: dict[str, Command]) -> list[str]:
        return [f"  {name:<9} {entry.summary}" for name, entry in table.items()]

    return "\n".join([
        "usage: mpiexec -n N python -m mpisgd [COMMAND] [ARGS ...]",
        "       python -m mpisgd [COMMAND] [ARGS ...]       (one process)",
        "",
        f"Distributed gradient descent over MPI (mpisgd {__version__}).",
        "",
        "commands run by every rank (under mpiexec; without it, as one rank):",
        *rows(COLLECTIVE),
        "commands run in one process (no mpiexec):",
        *rows(LOCAL),
        "  help      help COMMAND: the options of COMMAND (the same as COMMAND --help)",
        "",
        "options:",
        "  -h, --help  this list",
        "  --version   the version of mpisgd",
        "",
        "With no command, mpisgd trains: `mpisgd JOB.toml --set key=value` is",
        "`mpisgd train JOB.toml --set key=value`, and `mpisgd` alone trains the built-in",
        "example. Every job key: docs/jobs.md.",
    ])


def _unknown(word: str) -> int:
    """A first word that is neither a command nor a file: say so, with the nearest command."""
    commands = [*COLLECTIVE, *LOCAL, "help"]
    near = difflib.get_close_matches(word, commands, n=1)
    hint = f" Did you mean '{near[0]}'?" if near else ""
    _print(f"mpisgd: error: '{word}' is neither a command nor a job file.{hint} Commands: "
           f"{', '.join(commands)} (mpisgd --help).", sys.stderr)
    return 2


def _print(text: str, stream=None) -> None:
    """Print from one rank only when several ranks run this (before MPI starts, the
    launcher's rank variable tells which)."""
    if launcher_rank() in (None, "0"):
        print(text, file=stream or sys.stdout, flush=True)


def collective_command(argv: list[str]):
    """(command, its arguments) of a command that runs on every rank: train (the
    default), solve, eval, predict or cv."""
    if argv and argv[0] in COLLECTIVE:
        return _command(COLLECTIVE[argv[0]]), argv[1:]
    return _command(COLLECTIVE["train"]), argv


def run_collective(command, argv: list[str]) -> int:
    """Every rank: run ``command(argv)`` with the job's error discipline.

    An agreed error is printed once by rank 0 and every rank returns its code; any
    other exception on any rank is printed by that rank and aborts the whole job. Can
    run several jobs one after the other in one MPI world (each job duplicates the
    world communicator): the test suite's job pool does.
    """
    from mpi4py import MPI  # initialises MPI; every rank runs the lines below

    from mpisgd.runtime.log import end_live

    debug = "--debug" in argv
    rank = MPI.COMM_WORLD.Get_rank()
    try:
        return command(argv)
    except SystemExit as exc:   # --help: every rank parsed the same arguments and exits alike
        sys.stdout.flush()
        return exc.code if isinstance(exc.code, int) else 0
    except MpisgdError as exc:
        end_live()   # a live progress bar's line ends before the message
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

        end_live()
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

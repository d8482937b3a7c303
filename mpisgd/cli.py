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

import argparse
import os
import sys
import traceback

from mpisgd.errors import ConfigError, Interrupted, MpisgdError

USAGE = ("python -m mpisgd [train] [JOB.toml] [--set key=value ...] [--out DIR] "
         "[--resume auto|PATH] [--debug]")


def _train_parser() -> argparse.ArgumentParser:
    from mpisgd.commands.predict import ArgParser   # raises agreed errors, prints help on rank 0 only

    p = ArgParser(prog="mpisgd", usage=USAGE,
                  description="Distributed gradient descent over MPI. With no job file, runs "
                              "the built-in linear-regression example.")
    p.add_argument("job", nargs="?", help="job file (TOML); default: the built-in example")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a job key, e.g. optimizer.lr=0.05")
    p.add_argument("--out", help="run folder (default: a new folder under runs/)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="continue from the newest valid checkpoint of the run folder "
                        "('auto', needs --out) or from a checkpoint folder")
    p.add_argument("--timeline", metavar="FILE.json",
                   help="write per-rank spans in the Chrome trace event format (Perfetto)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "data":
        from mpisgd.commands.data import main as data_main

        return data_main(argv[1:])
    if argv and argv[0] == "info":
        return _info()
    if argv and argv[0] in ("plot", "compare"):  # one process, no MPI: see mpisgd.plot
        from mpisgd.commands.plot import main as plot_main; return plot_main(argv)  # noqa: E702
    return _collective(*collective_command(argv))


def collective_command(argv: list[str]):
    """(command, its arguments) of a command that runs on every rank: train (the
    default), solve, eval, predict or cv."""
    if argv and argv[0] in _COMMANDS:
        return _COMMANDS[argv[0]], argv[1:]
    if argv and argv[0] == "train":
        argv = argv[1:]
    return _train, argv


def _collective(command, argv: list[str]) -> int:
    """Prepare this process for MPI, then :func:`run_collective`."""
    from mpisgd.runtime.launch_env import tune_for_oversubscription
    from mpisgd.runtime.paths import set_numba_cache_dir
    from mpisgd.runtime.supervise import supervise

    supervise()   # before MPI starts: a rank killed by a signal is then named (see there)
    set_numba_cache_dir()
    tune_for_oversubscription()
    return run_collective(command, argv)


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


def _load(args):
    from mpisgd.config import load_config

    try:
        return load_config(args.job, args.overrides, out=args.out)
    except ConfigError as exc:
        exc.agreed = True  # every rank read the same file and flags: same verdict
        raise


def _train(argv: list[str]) -> int:
    args = _train_parser().parse_args(argv)
    return _run_training(_load(args), args.resume, args.timeline)


def _solve(argv: list[str]) -> int:
    """``mpisgd solve JOB.toml``: the exact least-squares (ridge) optimum, distributedly."""
    args = _train_parser().parse_args(argv)
    cfg = _load(args)
    from mpisgd.comm import bcast_value, make_topology
    from mpisgd.evaluation import evaluate, objective
    from mpisgd.runtime.log import say
    from mpisgd.oracle import solve
    from mpisgd.store.runfolder import write_oracle
    from mpisgd.train import prepare

    topo = make_topology(cfg.topology.ranks_per_node)
    ctx = prepare(cfg, topo)
    theta = solve(ctx)
    result = {"train_objective": objective(ctx, theta), "n_train": ctx.n_train,
              "train_data": ctx.info.path}
    if ctx.n_test:
        result["test"] = evaluate(ctx, theta)
    path = bcast_value(topo.world, lambda: write_oracle(ctx.run_dir, theta, result))
    test = result.get("test", {})
    say(f"mpisgd: exact optimum: train objective {result['train_objective']:.6g}"
        + (f", test mse {test['mse']:.6g}, r2 {test['r2']:.6g}" if test else "")
        + f"; written to {path}")
    topo.free()
    return 0


def _eval(argv: list[str]) -> int:
    from mpisgd.commands.predict import eval_main

    return eval_main(argv)


def _predict(argv: list[str]) -> int:
    from mpisgd.commands.predict import predict_main

    return predict_main(argv)


def _cv(argv: list[str]) -> int:
    from mpisgd.commands.cv import main as cv_main

    return cv_main(argv)


_COMMANDS = {"solve": _solve, "eval": _eval, "predict": _predict, "cv": _cv}


def _run_training(cfg, resume: str | None, timeline: str | None = None) -> int:
    from mpisgd.runtime import signals
    from mpisgd.comm import make_topology
    from mpisgd.train import rank_threads, run

    signals.install()
    topo = make_topology(cfg.topology.ranks_per_node)
    with rank_threads(topo):
        run(cfg, topo, resume, timeline)
    topo.free()
    return 0


def _info() -> int:
    """Versions of everything that decides how mpisgd runs here."""
    from mpisgd.runtime.paths import set_numba_cache_dir

    set_numba_cache_dir()
    import h5py
    import mpi4py
    import numba
    import numpy
    from mpi4py import MPI

    from mpisgd import __version__

    lib = MPI.Get_library_version().strip().splitlines()[0]
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: report what numba would pick
        layer = f"not yet chosen (config: {numba.config.THREADING_LAYER})"
    rows = [("mpisgd", __version__), ("python", sys.version.split()[0]),
            ("mpi4py", mpi4py.__version__), ("MPI library", lib),
            ("MPI standard", "%d.%d" % MPI.Get_version()),
            ("world size", str(MPI.COMM_WORLD.Get_size())),
            ("numpy", numpy.__version__), ("numba", numba.__version__),
            ("numba threading layer", layer),
            ("numba threads", str(numba.get_num_threads())),
            ("numba cache", os.environ.get("NUMBA_CACHE_DIR", "")),
            ("h5py", h5py.__version__), ("HDF5", h5py.version.hdf5_version)]
    if MPI.COMM_WORLD.Get_rank() == 0:
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
    return 0

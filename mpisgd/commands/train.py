"""``mpisgd [train]`` and ``mpisgd solve``: fit a job, or compute its exact optimum.

    python -m mpisgd [train] [JOB.toml] [--set key=value ...] [--out DIR] [--resume auto|PATH]
    python -m mpisgd solve JOB.toml ...        the exact least-squares (ridge) optimum

``--out`` on the folder of an earlier run needs ``--resume`` (continue it) or
``--overwrite`` (delete its files first): see :func:`mpisgd.store.runfolder.claim`.
"""

from __future__ import annotations

from mpisgd import oracle
from mpisgd.comm import Topology, bcast_value
from mpisgd.commands.common import (
    ArgParser,
    add_job_arguments,
    claim_out,
    load_job,
    on_world,
)
from mpisgd.evaluation import evaluate, objective
from mpisgd.runtime.log import say
from mpisgd.store import modelfile
from mpisgd.store.runfolder import write_oracle
from mpisgd.train import prepare, run

USAGE = ("python -m mpisgd [train] [JOB.toml] [--set key=value ...] [--out DIR] "
         "[--resume auto|PATH | --overwrite] [--timeline FILE] [--verbose] [--debug]")
SOLVE_USAGE = ("python -m mpisgd solve [JOB.toml] [--set key=value ...] [--out DIR] "
               "[--overwrite] [--verbose] [--debug]")


def parser() -> ArgParser:
    """The arguments of train."""
    p = ArgParser(prog="mpisgd train", usage=USAGE,
                  description="Fit a job: distributed gradient descent over MPI, every rank "
                              "on its block of the rows (under mpiexec -n N; alone, one "
                              "rank). With no job file, trains the built-in "
                              "linear-regression example. `mpisgd JOB.toml` is "
                              "`mpisgd train JOB.toml`.",
                  epilog="Ctrl-C or SIGTERM: the current step finishes, a checkpoint is "
                         "written, summary.json says so; continue with --resume auto. A "
                         "second Ctrl-C ends at once.")
    add_job_arguments(p, "run folder (default: output.dir, else a new folder under runs/); "
                         "one holding an earlier run needs --resume or --overwrite")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="continue from the newest valid checkpoint of the run folder "
                        "('auto', needs --out) or from a checkpoint folder")
    p.add_argument("--timeline", metavar="FILE.json",
                   help="write per-rank spans in the Chrome trace event format (Perfetto)")
    return p


def solve_parser() -> ArgParser:
    """The arguments of solve (the job is read as train reads it)."""
    p = ArgParser(prog="mpisgd solve", usage=SOLVE_USAGE,
                  description="The exact least-squares (ridge) optimum of a linear job, "
                              "computed by all ranks from their rows' sums (no gradient "
                              "descent); prints its train objective and test metrics and "
                              "writes oracle.h5 (readable by eval and predict) and "
                              "oracle.json into the run folder.")
    add_job_arguments(p, "run folder for oracle.h5 and oracle.json (default: output.dir, "
                         "else a new folder under runs/)")
    return p


def train_main(argv: list[str]) -> int:
    """``mpisgd train``: every rank runs it (collective over the world)."""
    args = parser().parse_args(argv)
    cfg = load_job(args.job, args.overrides, args.out)

    def body(topo: Topology) -> None:
        claim_out(topo, cfg.output.dir, resume=args.resume, overwrite=args.overwrite)
        run(cfg, topo, args.resume, args.timeline)

    return on_world(body, cfg.topology.ranks_per_node, stoppable=True, verbose=args.verbose)


def solve_main(argv: list[str]) -> int:
    """``mpisgd solve JOB.toml``: the exact least-squares (ridge) optimum, distributedly."""
    args = solve_parser().parse_args(argv)
    cfg = load_job(args.job, args.overrides, args.out)

    def body(topo: Topology) -> None:
        claim_out(topo, cfg.output.dir, overwrite=args.overwrite)
        _solve(cfg, topo)

    return on_world(body, cfg.topology.ranks_per_node, verbose=args.verbose)


def _solve(cfg, topo: Topology) -> None:
    """Collective over the world: solve, evaluate, rank 0 writes oracle.h5/.json."""
    ctx = prepare(cfg, topo)
    theta = oracle.solve(ctx)
    result = {"train_objective": objective(ctx, theta), "n_train": ctx.n_train,
              "train_data": ctx.info.path}
    if ctx.n_test:
        result["test"] = evaluate(ctx, theta)
    path = bcast_value(topo.world, lambda: write_oracle(
        ctx.run_dir, theta, result, spec=ctx.spec, task=ctx.info.task, cfg=ctx.cfg,
        **modelfile.data_meta(ctx.info, ctx.scaler)))
    test = result.get("test", {})
    say(f"mpisgd: exact optimum: train objective {result['train_objective']:.6g}"
        + (f", test mse {test['mse']:.6g}, r2 {test['r2']:.6g}" if test else "")
        + f"; written to {path}")

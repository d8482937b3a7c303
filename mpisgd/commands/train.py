"""``mpisgd [train]`` and ``mpisgd solve``: fit a job, or compute its exact optimum.

    python -m mpisgd [train] [JOB.toml] [--set key=value ...] [--out DIR] [--resume auto|PATH]
    python -m mpisgd solve JOB.toml ...        the exact least-squares (ridge) optimum
"""

from __future__ import annotations

from mpisgd import oracle
from mpisgd.comm import Topology, bcast_value
from mpisgd.commands.common import ArgParser, load_job, on_world
from mpisgd.evaluation import evaluate, objective
from mpisgd.runtime.log import say
from mpisgd.store.runfolder import write_oracle
from mpisgd.train import prepare, run

USAGE = ("python -m mpisgd [train] [JOB.toml] [--set key=value ...] [--out DIR] "
         "[--resume auto|PATH] [--debug]")


def parser() -> ArgParser:
    """The arguments of train (and solve, which reads the same job)."""
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


def train_main(argv: list[str]) -> int:
    """``mpisgd train``: every rank runs it (collective over the world)."""
    args = parser().parse_args(argv)
    cfg = load_job(args.job, args.overrides, args.out)
    return on_world(lambda topo: run(cfg, topo, args.resume, args.timeline),
                    cfg.topology.ranks_per_node, stoppable=True)


def solve_main(argv: list[str]) -> int:
    """``mpisgd solve JOB.toml``: the exact least-squares (ridge) optimum, distributedly."""
    args = parser().parse_args(argv)
    cfg = load_job(args.job, args.overrides, args.out)
    return on_world(lambda topo: _solve(cfg, topo), cfg.topology.ranks_per_node)


def _solve(cfg, topo: Topology) -> None:
    """Collective over the world: solve, evaluate, rank 0 writes oracle.h5/.json."""
    ctx = prepare(cfg, topo)
    theta = oracle.solve(ctx)
    result = {"train_objective": objective(ctx, theta), "n_train": ctx.n_train,
              "train_data": ctx.info.path}
    if ctx.n_test:
        result["test"] = evaluate(ctx, theta)
    path = bcast_value(topo.world, lambda: write_oracle(ctx.run_dir, theta, result))
    test = result.get("test", {})
    say(f"mpisgd: exact optimum: train objective {result['train_objective']:.6g}"
        + (f", test mse {test['mse']:.6g}, r2 {test['r2']:.6g}" if test else "")
        + f"; written to {path}")

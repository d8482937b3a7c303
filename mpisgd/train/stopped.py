"""A run stopped by a signal (SIGTERM, SIGUSR1, Ctrl-C) after its checkpoint: what
stopped it, the exit code every rank returns, and summary.json saying so."""

from __future__ import annotations

from mpisgd.comm import bcast_value
from mpisgd.context import Context
from mpisgd.errors import Interrupted
from mpisgd.runtime import signals
from mpisgd.store import runfolder


def record_stop(ctx: Context, exc: Interrupted, wall: float) -> None:
    """Collective over the world, called by every rank with the agreed ``exc``: agree on
    the signals received, set the exit code (130 when Ctrl-C was among them, else 75),
    and rank 0 writes summary.json.

    The ranks need not all have received the signal (one rank's SIGTERM stops the whole
    job): the union of what each received decides, the same on every rank.
    """
    world = ctx.topo.world
    received = sorted({n for names in world.allgather(signals.names()) for n in names})
    if "SIGINT" in received:
        exc.exit_code = signals.INTERRUPT_EXIT
    cfg = ctx.cfg
    summary = {
        "job": cfg.name, "mode": cfg.mode, "model": cfg.model.name,
        "world_size": ctx.topo.size, "nodes": ctx.topo.node_count, "dtype": str(ctx.dtype),
        "n_train": ctx.n_train, "n_test": ctx.n_test, "n_features": ctx.n_features,
        "n_params": ctx.n_params, "wall_time_s": wall,
        "stopped": {"signals": received, "exit_code": exc.exit_code, "message": str(exc),
                    "resume": f"--resume auto --out {ctx.run_dir}"},
        "train_data": ctx.info.path, "test_data": cfg.data.test or None,
        "run_dir": str(ctx.run_dir), "effective": ctx.effective.changes,
    }
    bcast_value(world, lambda: runfolder.write_summary(ctx.run_dir, summary))

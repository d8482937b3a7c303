"""The end of a parameter-server run that lost workers on the way.

Every collective over the world (and MPI_Finalize) would now wait for the dead ranks, so
the end is point to point: the servers gather the parameters on rank 0 over their own
communicator (every server is alive: a server's death ends the job), every other live
rank sends its statistics to rank 0, and rank 0 alone writes the model and the summary
(``train.lost``). The survivors then leave without MPI_Finalize (``comm.failures``).
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py.util.dtlib import from_numpy_dtype

from mpisgd.comm.p2p import TAG_STATS
from mpisgd.context import Context

# A dead rank's statistics, as far as the summary needs them.
_NOTHING = {"bytes_sent": 0, "bytes_received": 0, "steps_done": 0}


def finish_lost(ctx: Context, theta: np.ndarray, mine: np.ndarray,
                ranges: list[tuple[int, int]], stats: dict, server_comm, dead: list[int],
                run: dict) -> dict:
    """Every live rank: rank 0 gets the final parameters into ``theta`` and returns the
    run's statistics (with ``workers_lost``); the others return ``workers_lost`` alone."""
    world, roles, rank = ctx.topo.world, ctx.roles, ctx.topo.rank
    t_tail = time.perf_counter()
    if roles.is_server(rank):
        counts = [hi - lo for lo, hi in ranges]
        displs = [lo for lo, _ in ranges]
        kind = from_numpy_dtype(theta.dtype)
        server_comm.Gatherv([np.ascontiguousarray(mine), kind],
                            [theta, counts, displs, kind] if rank == 0 else None, root=0)
        server_comm.Free()
    if rank != 0:
        world.send(stats, dest=0, tag=TAG_STATS)
        return {"workers_lost": dead}
    counters = [dict(_NOTHING) for _ in range(world.Get_size())]
    counters[0] = stats
    for r in range(1, world.Get_size()):
        if r not in dead:
            counters[r] = world.recv(source=r, tag=TAG_STATS)
    ctx.timers["comm"] += time.perf_counter() - t_tail
    out = {"epochs": stats["epochs"], "steps": stats["version"],
           "start_step": run["start_step"], "steps_per_epoch": stats["steps_per_epoch"],
           "global_batch": stats["batch"], "samples": stats["samples"],
           "train_time_s": time.perf_counter() - run["t_train"],
           "interrupted": stats["interrupted"], "checkpoint": stats["checkpoint"],
           "memory": run["memory"], "workers_lost": dead,
           "counters": counters, "deaths": stats["deaths"]}
    return out

"""A parameter-server job: split the ranks into servers and workers, run each side's loop,
give every rank the final parameters, summarise the run.

Servers hold contiguous key ranges of the parameters and the optimizer state for
them (``server.py``); workers compute gradients and push them (``worker.py``); when
a server applies and answers pushes is the consistency policy's (``consistency.py``).
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import nullcontext

import numpy as np
from mpi4py import MPI

from mpisgd.comm.failures import FailureWatch, notice_folder
from mpisgd.comm.nodegroup import NodeGroup
from mpisgd.comm.p2p import HEADER_SLOTS, TAG_LOST, assemble
from mpisgd.comm.roles import key_range
from mpisgd.comm.shm import no_shm_reason, shm_possible, warn_no_shm
from mpisgd.context import Context
from mpisgd.errors import ConfigError, Interrupted
from mpisgd.modes.batches import make_batches
from mpisgd.modes.common import gradient_codec, make_plan, write_trace
from mpisgd.modes.ps.deaths import Deaths
from mpisgd.modes.ps.lost import finish_lost
from mpisgd.modes.ps.server import Server
from mpisgd.modes.ps.sparse_server import SparseServer
from mpisgd.modes.ps.sparse_worker import SparseWorker
from mpisgd.modes.ps.worker import Worker
from mpisgd.modes.sparse_chunks import make_sparse_batches
from mpisgd.optim import slice_state
from mpisgd.report.memory import node_memory


def fit(ctx: Context, theta: np.ndarray, start_step: int = 0,
        opt_state: dict | None = None) -> dict:
    """Collective over the world: train ``theta`` in place; return run statistics.

    Server ranks run the server loop, the others the worker loop; at the end every
    rank receives the final parameters from the servers. Raises Interrupted (agreed)
    after a checkpoint when a signal stopped training.
    """
    world, rank, roles = ctx.topo.world, ctx.topo.rank, ctx.roles
    n_servers = len(roles.servers)
    ranges = [key_range(ctx.n_params, n_servers, s) for s in range(n_servers)]
    server_comm = world.Split(0 if roles.is_server(rank) else MPI.UNDEFINED, rank)
    t_train = time.perf_counter()
    group, pushers, plan = _prepare(ctx, theta)
    if len(pushers) <= ctx.cfg.ps.backup_workers:   # the same list on every rank
        raise ConfigError(f"ps.backup_workers = {ctx.cfg.ps.backup_workers} must be smaller "
                          f"than the number of ranks that push gradients ({len(pushers)}: "
                          f"one per node with ps.node_aggregate).", agreed=True)
    going_on = ctx.cfg.ps.on_worker_failure == "continue"
    watch = _failure_watch(ctx) if going_on else nullcontext()
    # What each worker trains per epoch: the rows a death loses (partition placement).
    per_epoch = world.allgather(plan.rows_per_epoch()) if going_on else []
    with watch:
        if roles.is_server(rank):
            stats, mine, memory, data = _serve(ctx, theta, ranges, server_comm, start_step,
                                               opt_state, pushers, plan, watch, per_epoch)
        else:
            stats, mine, memory = _work(ctx, theta, ranges, start_step, plan, group)
            data = None
        dead = _agree_dead(ctx, server_comm, stats) if going_on else []
    if dead:   # no collective over the world from here on (see modes.ps.lost)
        out = finish_lost(ctx, theta, mine, ranges, stats, server_comm, dead,
                          {"start_step": start_step, "t_train": t_train, "memory": memory})
        if rank == 0:
            out["ps"] = _summarise(out.pop("counters"), roles, ctx.cfg.ps)
        return out
    if server_comm != MPI.COMM_NULL:
        server_comm.Free()
    plan.close()   # collective (the balanced counter's window)
    ctx.data_report = plan.report()
    if data is not None:
        ctx.data_report = {"served_bytes": data.sent_bytes, **data.report,
                           "skipped": data.skipped}
    for key in ("bytes_sent", "bytes_received"):
        ctx.counters[key] += stats[key]
    out, counters = _finish(ctx, theta, mine, ranges, stats, start_step, t_train)
    if ctx.cfg.comm.compression != "none":
        out["compression"] = (   # sparse: the bytes per step are in out["sparse"]
            {"scheme": ctx.cfg.comm.compression, "error_feedback": ctx.cfg.comm.error_feedback}
            if ctx.sparse else _compression(ctx, ranges, theta.itemsize))
    if rank == 0:
        out["ps"] = _summarise(counters, roles, ctx.cfg.ps)
        if ctx.sparse:
            out["sparse"] = _sparse_traffic(ctx, counters, pushers)
        out["ps"]["pushers"] = list(pushers)
        out["memory"] = memory
    return out


def _prepare(ctx: Context, theta: np.ndarray):
    """Collective: (node group, the ranks that push, the batches). Its collectives wait
    for the slowest rank's start: counted as set-up."""
    t0 = time.perf_counter()
    group, pushers = node_groups(ctx, theta)
    if ctx.sparse:
        plan = make_sparse_batches(ctx, make_plan(ctx))
        ctx.capacity = _capacity(ctx.topo.world, plan)
    else:
        plan = make_batches(ctx, make_plan(ctx))
    ctx.timers["setup"] += time.perf_counter() - t0
    return group, pushers, plan


def _failure_watch(ctx: Context) -> FailureWatch:
    """Going on through a worker's death: every rank learns of deaths from the notices;
    a server's death ends the job (its key range is gone)."""
    return FailureWatch(notice_folder(ctx.run_dir, ctx.run_token), ctx.roles.servers,
                        "a server's parameters cannot be recovered: resume from the newest "
                        "checkpoint (`mpisgd launch --max-restarts` does it)")


def _agree_dead(ctx: Context, server_comm, stats: dict) -> list[int]:
    """Every live rank: the workers that died, as the servers saw them (their union).
    Point to point from rank 0 to each live worker: no collective over the world."""
    world, roles = ctx.topo.world, ctx.roles
    if not roles.is_server(ctx.topo.rank):
        return world.recv(source=0, tag=TAG_LOST)
    seen = server_comm.allgather(sorted(d["rank"] for d in stats["deaths"]))
    dead = sorted(set().union(*seen))
    if ctx.topo.rank == 0:
        for w in roles.workers:
            if w not in dead:
                world.send(dead, dest=w, tag=TAG_LOST)
    return dead


def _serve(ctx: Context, theta: np.ndarray, ranges: list[tuple[int, int]], server_comm,
           start_step: int, opt_state: dict | None, pushers: tuple[int, ...], plan,
           watch, per_epoch: list[int]):
    """Server ranks only: (statistics, this server's slice, memory report, its data server)."""
    index = ctx.roles.server_index(ctx.topo.rank)
    lo, hi = ranges[index]
    t_init = time.perf_counter()
    args = (ctx, theta[lo:hi].copy(), lo, hi, index, server_comm, start_step,
            slice_state(opt_state, lo, hi), pushers, plan)
    server = SparseServer(*args, ctx.capacity) if ctx.sparse else Server(*args)
    if isinstance(watch, FailureWatch):
        server.deaths = Deaths(server, watch, per_epoch)
    ctx.timers["setup"] += time.perf_counter() - t_init
    t_mem = time.perf_counter()   # a collective: waits for the workers' set-up
    memory = node_memory(ctx.topo, server.held_bytes())
    ctx.timers["setup"] += time.perf_counter() - t_mem
    stats = server.run()
    if ctx.cfg.debug.trace_rows and not isinstance(watch, FailureWatch):
        write_trace(ctx, [])   # collective: servers take part with no rows
    return stats, server.theta, memory, server.data


def _work(ctx: Context, theta: np.ndarray, ranges: list[tuple[int, int]], start_step: int,
          plan, group: NodeGroup | None):
    """Worker ranks only: (statistics, an empty slice, memory report)."""
    worker = (SparseWorker(ctx, theta, ranges, start_step, plan, ctx.capacity) if ctx.sparse
              else Worker(ctx, theta, ranges, start_step, plan, group))
    t_mem = time.perf_counter()   # a collective: waits for the servers' set-up
    memory = node_memory(ctx.topo, worker.held_bytes())
    ctx.timers["setup"] += time.perf_counter() - t_mem
    stats = worker.run()
    if group is not None:
        group.free()
    return stats, np.empty(0, dtype=theta.dtype), memory


def _finish(ctx: Context, theta: np.ndarray, mine: np.ndarray, ranges: list[tuple[int, int]],
            stats: dict, start_step: int, t_train: float) -> tuple[dict, list[dict]]:
    """Collective over the world: every rank gets the final parameters and rank 0's
    statistics; (the run statistics, every rank's counters on rank 0)."""
    world, roles = ctx.topo.world, ctx.roles
    t_tail = time.perf_counter()   # assembling the result and the counters: communication
    owners = {r: ranges[i] for i, r in enumerate(roles.servers)}
    assemble(world, theta, mine, owners)
    counters = world.gather(stats, root=0)
    head = world.bcast(stats if ctx.topo.rank == 0 else None, root=0)
    ctx.timers["comm"] += time.perf_counter() - t_tail
    train_time = time.perf_counter() - t_train
    if world.allreduce(stats["interrupted"], op=MPI.MAX):
        raise Interrupted(f"stopped by a signal at step {head['version']}; checkpoint "
                          f"written to {head['checkpoint']}; rerun with --resume auto "
                          f"--out {ctx.run_dir} to continue.", agreed=True)
    out = {"epochs": head["epochs"], "steps": head["version"], "start_step": start_step,
           "steps_per_epoch": head["steps_per_epoch"], "global_batch": head["batch"],
           "samples": head["samples"], "train_time_s": train_time}
    return out, counters


def _capacity(world: MPI.Intracomm, plan) -> tuple[int, int]:
    """Collective: (most keys a sparse push carries, most it pulls), bounded over every
    worker, so each server's buffers hold any worker's message."""
    most = world.allreduce(plan.max_keys(), op=MPI.MAX)
    return most, most


def _sparse_traffic(ctx: Context, counters: list[dict], pushers) -> dict:
    """A worker's bytes per step (push + pull, headers included) against what the dense
    protocol moves per step: the whole vector each way."""
    steps = sum(counters[r]["steps_done"] for r in pushers)
    moved = sum(counters[r]["bytes_sent"] + counters[r]["bytes_received"] for r in pushers)
    n_servers = len(ctx.roles.servers)
    dense = 2 * (ctx.n_params * ctx.dtype.itemsize + n_servers * HEADER_SLOTS * 8)
    per_step = moved / max(1, steps)
    return {"bytes_per_step": per_step, "bytes_per_step_dense": dense,
            "share_of_dense": per_step / dense}


def _compression(ctx: Context, ranges: list[tuple[int, int]], itemsize: int) -> dict:
    head = HEADER_SLOTS * 8   # a push is one message: header + payload
    dense = sum(head + (hi - lo) * itemsize for lo, hi in ranges)
    sent = sum(head + gradient_codec(ctx, hi - lo).nbytes for lo, hi in ranges)
    return {"scheme": ctx.cfg.comm.compression,
            "bytes_per_push_dense": dense, "bytes_per_push_sent": sent,
            "ratio": dense / sent, "error_feedback": ctx.cfg.comm.error_feedback}


def _summarise(counters: list[dict], roles, ps_cfg) -> dict:
    servers = [counters[r] for r in roles.servers]
    staleness, lead = Counter(), Counter()
    for s in servers:
        staleness.update(s["staleness"])
        lead.update(s["lead"])
    return {
        "consistency": ps_cfg.consistency, "servers": list(roles.servers),
        "workers": list(roles.workers),
        "updates_per_server": [s["updates"] for s in servers],
        "gradients_dropped": sum(s["dropped"] for s in servers),
        "dropped_per_worker": _sum_dicts(s["dropped_from"] for s in servers),
        "staleness_histogram": {str(k): v for k, v in sorted(staleness.items())},
        # ssp: (step a worker was allowed to start) - (steps the slowest had completed)
        "ssp_lead_histogram": {str(k): v for k, v in sorted(lead.items())},
        "ssp_max_lead": max(lead) if lead else None,
        "bytes_sent": [c["bytes_sent"] for c in counters],
        "bytes_received": [c["bytes_received"] for c in counters],
        "worker_steps": {str(r): counters[r]["steps_done"] for r in roles.workers},
        # sparse, bsp with backup workers: pulls of a skipped-to step's keys
        "refreshes": {str(r): counters[r].get("refreshes", 0) for r in roles.workers},
    }


def _sum_dicts(dicts) -> dict:
    total = Counter()
    for d in dicts:
        total.update(d)
    return {str(k): v for k, v in sorted(total.items())}


def node_groups(ctx: Context, theta: np.ndarray) -> tuple[NodeGroup | None, tuple[int, ...]]:
    """Collective over the world: this worker's node group (None without aggregation)
    and the ranks that push to the servers (every worker, or one per node group).

    A node whose workers cannot share memory (``MPISGD_NO_SHM``) does not aggregate:
    its workers push on their own, with a warning; the servers learn who pushes.
    """
    topo, roles = ctx.topo, ctx.roles
    worker = not roles.is_server(topo.rank)
    aggregate = ctx.cfg.ps.node_aggregate and worker
    comm = topo.world.Split(topo.node_index if aggregate else MPI.UNDEFINED, topo.rank)
    group = None
    if comm != MPI.COMM_NULL:
        if comm.Get_size() > 1 and shm_possible(comm):
            group = NodeGroup(comm, theta)
        else:
            if comm.Get_size() > 1:
                warn_no_shm(comm, no_shm_reason())
            comm.Free()
    pusher = worker and (group is None or group.leader)
    pushers = tuple(r for r, p in enumerate(topo.world.allgather(pusher)) if p)
    return group, pushers

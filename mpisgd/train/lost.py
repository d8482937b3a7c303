"""The end of a run that went on through workers' deaths (``ps.on_worker_failure =
"continue"``): rank 0 writes the model and the summary, every survivor leaves.

No collective over the world is possible any longer (modes.ps.lost), so the held-out
evaluation, which every rank takes part in, is not run here: the summary says so and
names the command that evaluates the written model.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import numpy as np

from mpisgd.comm.failures import leave_job
from mpisgd.context import Context
from mpisgd.runtime.log import say, warn
from mpisgd.store import modelfile, runfolder

EXIT_STOPPED = 75   # a signal stopped the run after a checkpoint, as in a whole job


def finish_lost(ctx: Context, theta: np.ndarray, stats: dict, t_start: float) -> None:
    """Every live rank; never returns."""
    if ctx.topo.rank == 0:
        _write(ctx, theta, stats, t_start)
        _end_evicted(ctx, stats["deaths"])
    leave_job(EXIT_STOPPED if stats.get("interrupted") else 0)


def _write(ctx: Context, theta: np.ndarray, stats: dict, t_start: float) -> None:
    cfg = ctx.cfg
    dead = stats["workers_lost"]
    model_path = None
    if cfg.output.save_model:
        model_path = modelfile.write_model(ctx.run_dir, theta, ctx.spec, ctx.info.task, cfg,
                                           **modelfile.data_meta(ctx.info, ctx.scaler))
    evaluate = (f"python -m mpisgd eval {model_path} --data "
                f"{cfg.data.test or ctx.info.path}" if model_path else None)
    summary = {
        "job": cfg.name, "mode": cfg.mode, "model": cfg.model.name,
        "world_size": ctx.topo.size, "nodes": ctx.topo.node_count, "dtype": str(ctx.dtype),
        "n_train": ctx.n_train, "n_test": ctx.n_test, "n_features": ctx.n_features,
        "n_params": ctx.n_params, **{k: v for k, v in stats.items() if k != "deaths"},
        "samples_per_s": stats["samples"] / max(stats["train_time_s"], 1e-12),
        "wall_time_s": time.perf_counter() - t_start,
        "failures": {"on_worker_failure": "continue", "dead_workers": stats["deaths"],
                     "rows_not_trained": 0},
        "evaluation": {"skipped": "the job lost ranks, and the held-out evaluation needs "
                                  "every rank", "command": evaluate},
        "train_data": ctx.info.path, "test_data": cfg.data.test or None,
        "run_dir": str(ctx.run_dir), "effective": ctx.effective.changes,
        "warnings": ctx.advice.records,
    }
    failures = summary["failures"]
    failures["rows_not_trained"] = sum(d["rows_not_trained"] for d in failures["dead_workers"])
    runfolder.write_summary(ctx.run_dir, summary)
    say(f"mpisgd: done in {summary['wall_time_s']:.2f} s without worker rank(s) "
        f"{', '.join(map(str, dead))}: {summary['steps']} steps, "
        f"{summary['samples_per_s']:,.0f} samples/s, {failures['rows_not_trained']} "
        f"row-steps not trained")
    if evaluate:
        say(f"mpisgd: model written to {model_path}")
        warn(f"held-out metrics were not computed (the job lost ranks); run: {evaluate}")
    say(f"mpisgd: summary written to {ctx.run_dir / 'summary.json'}")


def _end_evicted(ctx: Context, deaths: list[dict]) -> None:
    """Rank 0: a worker declared dead by the timeout (no notice) may still be alive, hung
    or stopped; the launcher would wait for it forever. End it when it runs on this host
    (its pid is in ranks.json); otherwise say so: its own step watchdog ends it."""
    suspects = [d["rank"] for d in deaths if d["detected_by"] == "timeout"]
    if not suspects:
        return
    rows = {r["rank"]: r for r in json.loads((ctx.run_dir / "ranks.json").read_text())}
    for rank in suspects:
        host, pid = rows[rank]["host"], rows[rank]["pid"]
        if host == socket.gethostname():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            say(f"mpisgd: ended worker rank {rank} (pid {pid}), declared dead by "
                f"ps.dead_after, so that the launcher does not wait for it")
        else:
            warn(f"worker rank {rank} (pid {pid} on {host}) was declared dead by "
                 f"ps.dead_after and may still be running; its step watchdog ends it "
                 f"after 2 x train.step_timeout + 5 s, or end it by hand")

"""Training goes on through a worker's death (``ps.on_worker_failure = "continue"``):
every consistency model finishes without the dead worker, balanced assignment hands its
unapplied chunks to the others (every row of every epoch used exactly once), partition
placement reports the rows lost, and a server's death still ends the job at once.

Each job runs under the launcher's keep-alive flag (MPICH's ``-disable-auto-cleanup``),
bounded by a timeout, and must leave no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, mpiexec_cmd, mpiexec_path

from mpisgd.data import write_shard
from mpisgd.data.partition import holdout_mask
from mpisgd.runtime.mpi_launcher import keep_alive_flags, launcher_kind

from .datasets import sets
from .procs import job_pids, kill_job, wait_gone

LIMIT = 60   # seconds from the start to the end of any job here
# 3000 rows, 2390 for training: 24 steps of 100 rows per epoch, 4 epochs.
BASE = sets("data.synth.rows=3000", "data.synth.features=8", "data.synth.shards=3",
            "train.epochs=4", "train.batch_size=100", "optimizer.schedule='constant'",
            "mode='ps'", "ps.servers=2", "ps.on_worker_failure='continue'")
N = 5   # servers 0 and 1, workers 2, 3, 4
VICTIM = 4


def keep_alive() -> list[str]:
    """The launcher's flag that keeps a job going through a process's death."""
    flags = keep_alive_flags(launcher_kind(mpiexec_path()))
    assert flags, f"no keep-alive flag known for {mpiexec_path()}"
    return flags


# The launcher's exit code when a worker was killed and every survivor exited 0: hydra
# returns the largest exit code of its processes (the dead rank's supervisor exits 137);
# Open MPI's prterun under --enable-recovery (measured) returns the same.
KILLED = 128 + signal.SIGKILL


def _start(args: list[str], env: dict, n: int) -> subprocess.Popen:
    cmd = [*mpiexec_cmd(), *keep_alive(), "-n", str(n), sys.executable, "-m", "mpisgd", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(env, MPISGD_SUPERVISE="1"), cwd=str(ROOT),
                            start_new_session=True)


def _run(launch, args: list[str], out: Path, kill: int | None = None,
         n: int = N, sig: int = signal.SIGKILL) -> subprocess.CompletedProcess:
    """Run the job; with ``kill``, send that rank ``sig`` once a checkpoint exists."""
    proc = _start(args + ["--out", str(out)], launch.env, n)
    t0 = time.monotonic()
    try:
        if kill is not None:
            while not list((out / "checkpoints").glob("step-*")):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() - t0 < LIMIT, "no checkpoint came"
                time.sleep(0.05)
            os.kill(job_pids(str(out))[kill], sig)
        stdout, stderr = proc.communicate(timeout=max(1, LIMIT - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        kill_job(proc.pid)
        stdout, stderr = proc.communicate()
        pytest.fail(f"HANG: the job did not end within {LIMIT} s\n--- stdout\n{stdout[-3000:]}"
                    f"\n--- stderr\n{stderr[-3000:]}")
    except BaseException:
        kill_job(proc.pid)
        proc.communicate()
        raise
    assert wait_gone(str(out)) == [], "processes of the job left behind"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("consistency", ["bsp", "asp", "ssp"])
def test_a_killed_worker_does_not_stop_training(launch, tmp_path, consistency):
    """Worker rank 4 SIGKILLs itself in its second epoch, at step 30, after computing that
    step's gradient and before pushing it (``debug.fail_kind = "kill"``: the same death as
    a kill from outside, at a known step; the server and hang tests below kill from
    outside)."""
    out = tmp_path / "run"
    args = BASE + sets(f"ps.consistency='{consistency}'", "debug.trace_rows=true",
                       f"debug.fail_rank={VICTIM}", "debug.fail_step=30",
                       "debug.fail_kind='kill'")
    r = _run(launch, args, out)
    # The launcher reports the dead rank's exit, 128 + 9 from its supervisor; every
    # survivor exited 0 after writing its files.
    assert r.returncode == KILLED, r.stderr
    assert "died of signal 9 (SIGKILL)" in r.stderr
    assert f"worker rank {VICTIM} is gone" in r.stderr
    assert "Traceback" not in r.stderr
    s = _summary(out)
    (death,) = s["failures"]["dead_workers"]
    assert death["rank"] == VICTIM and death["detected_by"] == "supervisor"
    assert s["workers_lost"] == [VICTIM]
    # Trained past the death, to the end, by the other workers.
    assert s["steps"] >= 96 and s["epochs"] == 4
    steps = s["ps"]["worker_steps"]
    assert steps["2"] == steps["3"] == 96 and steps[str(VICTIM)] == 0   # a dead rank's: 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if "epoch" in x] == [1, 2, 3, 4]
    # Partition placement: its rows are lost for the rest of the run, and counted. Its
    # whole first epoch is in its trace (the steps the servers answered).
    mine = np.fromfile(out / "trace" / f"rank{VICTIM}.bin", dtype=np.int64).reshape(-1, 2)
    per_epoch = int((mine[:, 0] == 0).sum())
    assert death["last_step_applied"] == 29
    assert death["rows_not_trained"] == round(per_epoch * (96 - 30) / 24) > 0
    assert s["failures"]["rows_not_trained"] == death["rows_not_trained"]
    # The model is usable: its held-out fit is good (the synthetic data is linear).
    ev = launch(1, ["eval", str(out / "model.h5"), "--data", s["train_data"]], check=True)
    assert "r2" in ev.stdout


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("uneven")
    rng = np.random.default_rng(0)
    w = rng.standard_normal(5)
    for i, n in enumerate((1000, 2531, 347)):
        X = rng.standard_normal((n, 5))
        write_shard(str(folder / f"part-{i}.h5"), X, X @ w + 0.1 * rng.standard_normal(n),
                    "regression", 0)
    return str(folder)


def _traced(out: Path) -> np.ndarray:
    """Every rank's (epoch, row id) pairs of its answered steps."""
    parts = [np.fromfile(p, dtype=np.int64).reshape(-1, 2)
             for p in sorted((out / "trace").glob("rank*.bin"))]
    return np.concatenate(parts)


@pytest.mark.parametrize("consistency, placement",
                         [("bsp", "storage"), ("asp", "storage"), ("bsp", "server")])
def test_balanced_assignment_uses_every_row_once_per_epoch_after_a_death(
        launch, tmp_path, uneven, consistency, placement):
    # 4 ranks: servers 0 and 1, workers 2 and 3. Worker 2 waits 50 ms before each step, so
    # worker 3 takes every chunk of step 3, computes them, and dies before pushing.
    out = tmp_path / "run"
    args = sets(f"data.train='{uneven}'", "data.chunk_rows=100", "train.batch_size=400",
                "train.epochs=2", "optimizer.lr=0.05", "optimizer.schedule='constant'",
                "mode='ps'", "ps.servers=2", "ps.on_worker_failure='continue'",
                f"ps.consistency='{consistency}'", f"data.placement='{placement}'",
                "data.assign='balanced'", "debug.trace_rows=true",
                "debug.fail_rank=3", "debug.fail_step=3", "debug.fail_kind='kill'",
                "debug.slow_rank=2", "debug.slow_ms=50")
    r = _run(launch, args, out, n=4)
    assert r.returncode == KILLED, r.stderr
    s = _summary(out)
    (death,) = s["failures"]["dead_workers"]
    assert death["chunks_handed_over"] == 4 and death["chunks_lost"] == 0
    assert s["failures"]["rows_not_trained"] == 0
    pairs = _traced(out)
    train = np.flatnonzero(~holdout_mask(0, 3878, 0.2, seed=0))
    for epoch in range(2):
        used = np.sort(pairs[pairs[:, 0] == epoch, 1])
        np.testing.assert_array_equal(used, train)


def test_a_server_death_still_ends_the_job_at_once(launch, tmp_path):
    out = tmp_path / "run"
    args = BASE + sets("debug.slow_rank=3", "debug.slow_ms=30", "checkpoint.every_steps=5")
    t0 = time.monotonic()
    r = _run(launch, args, out, kill=1)
    assert time.monotonic() - t0 < 30
    assert r.returncode != 0
    assert "rank 1 died" in r.stderr and "cannot be recovered" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (out / "summary.json").exists()


def test_a_hung_worker_is_declared_dead_after_dead_after_and_ended(launch, tmp_path):
    """No notice comes from a stopped process: the servers declare it dead after
    ps.dead_after seconds without a push, the others finish, and rank 0 ends it (same
    host) so that the launcher does not wait for it."""
    out = tmp_path / "run"
    args = BASE + sets(f"debug.slow_rank={VICTIM}", "debug.slow_ms=30",
                       "checkpoint.every_steps=5", "ps.dead_after=2")
    t0 = time.monotonic()
    r = _run(launch, args, out, kill=VICTIM, sig=signal.SIGSTOP)
    assert time.monotonic() - t0 < 30
    assert r.returncode == KILLED, r.stderr
    s = _summary(out)
    (death,) = s["failures"]["dead_workers"]
    assert death["rank"] == VICTIM and death["detected_by"] == "timeout"
    assert "ps.dead_after" in death["cause"]
    assert s["steps"] == 96 and s["ps"]["worker_steps"]["2"] == 96
    assert f"ended worker rank {VICTIM}" in r.stdout


def test_a_sparse_job_goes_on_after_a_worker_is_killed(launch, tmp_path):
    """Sparse ps (pairs pushed, next keys pulled): the same as dense."""
    out = tmp_path / "run"
    args = BASE + sets("data.synth.kind='sparse'", "model.name='logistic'",
                       "data.synth.features=2048", "data.synth.nnz=8", "optimizer.lr=0.5",
                       f"debug.fail_rank={VICTIM}", "debug.fail_step=30",
                       "debug.fail_kind='kill'")
    r = _run(launch, args, out)
    assert r.returncode == KILLED, r.stderr
    s = _summary(out)
    (death,) = s["failures"]["dead_workers"]
    assert death["rank"] == VICTIM and s["steps"] == 96 and s["epochs"] == 4
    assert s["ps"]["worker_steps"]["2"] == 96 and death["rows_not_trained"] > 0
    ev = launch(1, ["eval", str(out / "model.h5"), "--data", s["train_data"]], check=True)
    assert "accuracy" in ev.stdout

"""``mpisgd launch``: a job that fails is relaunched from its newest checkpoint into the
same run folder (a server killed mid-run: the resumed run ends bitwise like an
uninterrupted one), ``--max-restarts 0`` is the launcher alone, a rank that keeps failing
is left out (not below ``--min-ranks``), and bad input is not retried.

Every launch ends within 60 s and leaves no process (tests/launch/procs.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
from conftest import ROOT
from faults.scenarios import BASE, MODES, SLOW

from launch.procs import job_pids, kill_job, wait_gone
from mpisgd.commands.launch import LOG
from mpisgd.runtime import mpi_launcher

from .datasets import sets

LIMIT = 60.0
PS_BSP = BASE + MODES["ps-bsp"]
SERVER, WORKER = 1, 3
# Rank 3 raises at step 10 in every attempt at 4 ranks; the checkpoint of step 7 is
# written before, so each relaunch resumes from it (and fails again, until rank 3 is gone).
FAILING = BASE + sets("debug.fail_rank=3", "debug.fail_step=10")


def _start(launch, launch_args: list[str], job: list[str], out: Path) -> subprocess.Popen:
    """``mpisgd launch LAUNCH_ARGS -- JOB --out OUT`` in a session of its own, every rank
    under its supervisor (which names a rank killed by a signal)."""
    cmd = [sys.executable, "-m", "mpisgd", "launch", *launch_args, "--", *job,
           "--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(launch.env, MPISGD_SUPERVISE="1"), cwd=str(ROOT),
                            start_new_session=True)


def _finish(proc: subprocess.Popen, out: Path, t0: float) -> subprocess.CompletedProcess:
    """Wait for the end (within LIMIT of ``t0``), then check that nothing is left."""
    try:
        stdout, stderr = proc.communicate(timeout=max(1.0, LIMIT - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        kill_job(proc.pid)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"did not end within {LIMIT} s\n--- stdout\n{stdout[-3000:]}\n"
                             f"--- stderr\n{stderr[-3000:]}") from None
    assert wait_gone(str(out), timeout=10) == [], "leftover processes:\n" + stderr
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _run(launch, launch_args, job, out, kill: int | None = None, send: int | None = None):
    """Run ``mpisgd launch`` (or, with ``launch_args`` None, plain mpiexec), SIGKILLing
    rank ``kill`` (or sending signal ``send`` to the launch process alone) once the first
    checkpoint exists; (result, killed pid, seconds)."""
    t0 = time.monotonic()
    if launch_args is None:
        proc = launch.start(4, job + ["--out", str(out)])
    else:
        proc = _start(launch, launch_args, job, out)
    killed = None
    try:
        if kill is not None or send is not None:
            _wait_for_checkpoint(out, proc)
        if kill is not None:
            killed = job_pids(str(out))[kill]
            os.kill(killed, signal.SIGKILL)
        if send is not None:
            os.kill(proc.pid, send)
    except BaseException:
        kill_job(proc.pid)
        proc.communicate()
        raise
    result = _finish(proc, out, t0)
    return result, killed, time.monotonic() - t0


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + LIMIT
    while not list((out / "checkpoints").glob("step-*")):
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before the kill: {proc.communicate()}")
        assert time.monotonic() < deadline, "the job never got to its first checkpoint"
        time.sleep(0.05)


def _where(r: subprocess.CompletedProcess, seconds: float) -> str:
    return f"exit {r.returncode} in {seconds:.1f} s\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"


def _attempts(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG).read_text().splitlines()]


def _theta(out: Path) -> bytes:
    with h5py.File(out / "model.h5", "r") as f:
        return f["theta"][...].tobytes()


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_a_dead_server_is_relaunched_and_ends_like_an_uninterrupted_run(launch, tmp_path):
    reference = tmp_path / "reference"
    launch(4, PS_BSP + ["--out", str(reference)], timeout=LIMIT, check=True)
    out = tmp_path / "run"
    r, killed, seconds = _run(launch, ["-n", "4", "--max-restarts", "1"], PS_BSP + SLOW, out,
                              kill=SERVER)
    where = _where(r, seconds)
    assert r.returncode == 0, where
    first, second = _attempts(out)
    assert first["exit_code"] != 0 and first["failed_ranks"] == [SERVER], first
    assert first["restarted"] and first["why_not"] is None and first["next_ranks"] == 4
    assert f"(pid {killed}) died of signal 9 (SIGKILL)" in " ".join(first["messages"])
    assert "--resume" not in first["command"] and first["command"].count("--out") == 1
    assert second["command"][-4:] == ["--out", str(out), "--resume", "auto"], second
    assert second["exit_code"] == 0 and not second["restarted"], second
    assert f"mpisgd launch: attempt 2 of 2: relaunching with --resume auto after exit " \
           f"{first['exit_code']} (rank {SERVER}: the process (pid {killed}) died of signal 9" \
           in r.stderr, where
    assert "resuming at step" in r.stdout, where
    assert _summary(out)["world_size"] == 4
    assert _theta(out) == _theta(reference), "the resumed run ended differently: " + where


def test_a_job_that_went_on_through_a_death_is_not_relaunched(launch, tmp_path):
    """ps.on_worker_failure = "continue": launch adds the launcher's keep-alive flag; the
    job trains to its end without the dead worker, and the launcher's nonzero code (the
    death it saw) is passed on, not taken for a failure to relaunch."""
    out = tmp_path / "run"
    job = BASE + sets("mode='ps'", "ps.servers=2", "ps.on_worker_failure='continue'")
    r, _, seconds = _run(launch, ["-n", "4", "--max-restarts", "2"], job + SLOW, out,
                         kill=WORKER)
    where = _where(r, seconds)
    [attempt] = _attempts(out)
    kind = mpi_launcher.launcher_kind(attempt["command"][0])
    assert mpi_launcher.keep_alive_flags(kind)[0] in attempt["command"], attempt["command"]
    assert r.returncode == attempt["exit_code"] != 0, where
    assert attempt["finished"] and not attempt["restarted"], attempt
    assert attempt["why_not"].startswith("the run finished (summary.json written)"), attempt
    assert "mpisgd launch" not in r.stderr, where   # a finished run: nothing to add
    summary = _summary(out)
    assert summary["workers_lost"] == [WORKER] and summary["steps"] == 96, summary


def test_no_restarts_is_the_launcher_alone(launch, tmp_path):
    plain, _, _ = _run(launch, None, PS_BSP + SLOW, tmp_path / "plain", kill=SERVER)
    out = tmp_path / "run"
    r, _, _ = _run(launch, ["-n", "4", "--max-restarts", "0"], PS_BSP + SLOW, out, kill=SERVER)
    assert plain.returncode != 0
    assert r.returncode == plain.returncode, (plain.stderr, r.stderr)
    assert "mpisgd launch" not in r.stderr, r.stderr   # nothing of its own to say
    [attempt] = _attempts(out)
    assert attempt["exit_code"] == r.returncode and not attempt["restarted"]
    assert attempt["why_not"] == "--max-restarts 0 reached"


def test_a_signal_to_launch_is_passed_on_and_ends_the_loop(launch, tmp_path):
    """SIGUSR1 (what slurm/train.sbatch sends before the time limit) to launch alone: the
    launcher passes it to every rank, the job checkpoints and stops (75), no relaunch."""
    out = tmp_path / "run"
    r, _, seconds = _run(launch, ["-n", "4", "--max-restarts", "2"], BASE + SLOW, out,
                         send=signal.SIGUSR1)
    where = _where(r, seconds)
    assert r.returncode == 75, where
    [attempt] = _attempts(out)
    assert attempt["why_not"].startswith("mpisgd launch got SIGUSR1 and passed it on"), attempt
    assert "mpisgd: stopped: stopped by a signal" in r.stderr, where
    assert "mpisgd launch: not relaunching: mpisgd launch got SIGUSR1" in r.stderr, where


def test_a_rank_that_keeps_failing_is_left_out(launch, tmp_path):
    out = tmp_path / "run"
    r, _, seconds = _run(launch, ["-n", "4", "--max-restarts", "3", "--min-ranks", "2"],
                         FAILING, out)
    where = _where(r, seconds)
    assert r.returncode == 0, where
    attempts = _attempts(out)
    assert [a["ranks"] for a in attempts] == [4, 4, 3], where
    assert [a["exit_code"] for a in attempts] == [1, 1, 0]
    assert [a["failed_ranks"] for a in attempts] == [[3], [3], []]
    assert "relaunching with --resume auto at 3 ranks (rank 3 failed in the last two " \
           "attempts)" in r.stderr, where
    assert r.stdout.count("resuming at step 7 ") == 2, where
    assert _summary(out)["world_size"] == 3


def test_not_below_min_ranks(launch, tmp_path):
    out = tmp_path / "run"
    r, _, seconds = _run(launch, ["-n", "4", "--max-restarts", "3", "--min-ranks", "4"],
                         FAILING, out)
    where = _where(r, seconds)
    assert r.returncode == 1, where
    assert [a["ranks"] for a in _attempts(out)] == [4, 4], where
    assert "mpisgd launch: error: rank 3 failed in the last two attempts at 4 ranks, and 3 " \
           "would be fewer than --min-ranks 4: giving up after 2 attempt(s), exit 1" \
           in r.stderr, where
    assert not (out / "summary.json").exists()


def test_bad_input_is_not_retried(launch, tmp_path):
    # Seen by launch itself, reading the job: no launcher is started.
    out = tmp_path / "bad-value"
    r, _, _ = _run(launch, ["-n", "2", "--max-restarts", "2"], sets("train.epochs=-1"), out)
    assert r.returncode == 2, r.stderr
    assert "mpisgd launch: error: " in r.stderr and "'train.epochs'" in r.stderr
    assert not out.exists()
    # Seen by the ranks: a data file that does not exist.
    out = tmp_path / "bad-data"
    r, _, _ = _run(launch, ["-n", "2", "--max-restarts", "2"],
                   sets(f"data.train='{tmp_path / 'gone.h5'}'"), out)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("does not exist") == 1, r.stderr
    assert "mpisgd launch: not relaunching: exit 2 is bad input" in r.stderr
    [attempt] = _attempts(out)
    assert attempt["exit_code"] == 2 and not attempt["restarted"]
    assert attempt["messages"] == [line for line in r.stderr.splitlines()
                                   if line.startswith("mpisgd: error")]

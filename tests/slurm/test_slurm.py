"""slurm/train.sbatch, slurm/sweep.sbatch and slurm/gather.py on a real single-node Slurm
(see conftest.py): results equal to mpiexec's, both launch paths, checkpoint + requeue on
SIGUSR1, a sweep as a job array, and a failing rank ending the job promptly."""

from __future__ import annotations

import csv
import getpass
import io
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import h5py
import pytest

from .conftest import SLURM_DIR, job_logs

LAUNCHERS = ["srun", "mpiexec"]
# A small job (3000 x 8, 24 steps per epoch) for everything but the default-job comparison.
SMALL = ["--set", "data.synth.rows=3000", "--set", "data.synth.features=8",
         "--set", "data.synth.shards=3", "--set", "train.batch_size=100",
         "--set", "optimizer.schedule='constant'"]
TIME = ["--time=10"]


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def theta_of(run: Path) -> bytes:
    with h5py.File(run / "model.h5", "r") as f:
        return f["theta"][...].tobytes()


def _check(job, code: int = 0):
    assert job.returncode == code, f"sbatch --wait exited {job.returncode}:\n{job.log}"


# ---- the script's plumbing, with a stand-in for Python (seconds, no training) ------------

FAKE_PYTHON = """#!/bin/bash
echo "task ${SLURM_PROCID:-?}: ARGS $*"
echo "task ${SLURM_PROCID:-?}: NUMBA_CACHE_DIR=$NUMBA_CACHE_DIR" \
     "MPISGD_NUM_THREADS=${MPISGD_NUM_THREADS:-unset}"
if [ -n "${FAKE_TRAIN:-}" ]; then      # like mpisgd: run until a signal, then exit 75
    trap 'echo "task ${SLURM_PROCID:-?}: stopping"; exit 75' USR1 TERM
    touch "$FAKE_TRAIN"
    while :; do sleep 0.1; done
fi
exit ${FAKE_RC:-0}
"""


@pytest.fixture
def fake_python(tmp_path) -> str:
    path = tmp_path / "fake-python"
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return str(path)


def test_script_passes_run_folder_threads_and_numba_cache(sbatch, tmp_path, fake_python):
    # MPISGD_NUMBA_CACHE empty: the script's own node-local default under $TMPDIR.
    job = sbatch("train.sbatch", ["-n", "2", "-c", "2", *TIME],
                 ["jobs/logreg.toml", "--set", "train.epochs=3"], tmp_path,
                 env={"MPISGD_PYTHON": fake_python, "MPISGD_NUMBA_CACHE": ""}, timeout=60)
    _check(job)
    args = (f"ARGS -m mpisgd --out {job.run()} --resume auto jobs/logreg.toml "
            f"--set train.epochs=3")
    cache = f"{sbatch.env['TMPDIR']}/mpisgd-numba-{getpass.getuser()}"
    for task in (0, 1):
        assert f"task {task}: {args}" in job.log
        assert f"task {task}: NUMBA_CACHE_DIR={cache} MPISGD_NUM_THREADS=2" in job.log
    assert "SLURM_RESTART_COUNT=0" in job.log


def test_exit_75_without_requeue_is_reported(sbatch, tmp_path, fake_python):
    job = sbatch("train.sbatch", ["-n", "1", *TIME], [], tmp_path,
                 env={"MPISGD_PYTHON": fake_python, "FAKE_RC": "75", "MPISGD_REQUEUE": "0"},
                 timeout=60)
    _check(job, 75)
    assert f"continue with: MPISGD_RUN={tmp_path}/runs/slurm-{job.id} sbatch" in job.log


def test_scancel_is_not_undone_by_a_requeue(sbatch, tmp_path, fake_python):
    started = tmp_path / "started"
    t0 = time.monotonic()
    proc, id_file = sbatch.start("train.sbatch", ["-n", "2", *TIME], [], tmp_path,
                                 env={"MPISGD_PYTHON": fake_python, "FAKE_TRAIN": str(started)})
    try:
        job_id = sbatch.job_id(id_file)
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline and proc.poll() is None, \
                f"the job never started:\n{job_logs(tmp_path)}"
            time.sleep(0.1)
        sbatch.cluster.run("scancel", job_id)   # SIGTERM to every process, then SIGKILL
    except BaseException:
        sbatch.cancel(proc, id_file)
        raise
    job = sbatch.finish(proc, id_file, tmp_path, t0, timeout=60)
    assert job.returncode != 0, job.log
    assert "got SIGTERM" in job.log and "not requeueing" in job.log, job.log
    assert "SLURM_RESTART_COUNT=1" not in job.log


# ---- real training ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_reference(launch, tmp_path_factory) -> dict:
    """The default job under plain ``mpiexec -n 8``: deterministic at a given world size."""
    out = tmp_path_factory.mktemp("ref") / "run"
    launch(8, ["--out", str(out)], timeout=240, check=True)
    return summary_of(out)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_default_job_on_8_tasks_matches_mpiexec(sbatch, tmp_path, default_reference, launcher):
    job = sbatch("train.sbatch", ["-n", "8", *TIME], [], tmp_path,
                 env={"MPISGD_LAUNCHER": launcher}, timeout=240)
    _check(job)
    s = summary_of(job.run())
    assert s["world_size"] == 8
    assert s["test"]["mse"] == default_reference["test"]["mse"]
    assert s["train_objective"] == default_reference["train_objective"]
    assert "8 rank(s) on 1 node(s)" in job.log


REQUEUE_JOB = SMALL + ["--set", "train.epochs=6", "--set", "checkpoint.every_steps=10",
                       "--set", "optimizer.momentum=0.9"]


@pytest.fixture(scope="module")
def requeue_reference(launch, tmp_path_factory) -> Path:
    """The requeue test's job, uninterrupted, under plain ``mpiexec -n 4``."""
    out = tmp_path_factory.mktemp("ref") / "run"
    launch(4, REQUEUE_JOB + ["--out", str(out)], timeout=120, check=True)
    return out


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_usr1_checkpoints_requeues_and_resumes_bitwise(sbatch, requeue_reference, tmp_path,
                                                       launcher):
    # 20 ms per step on rank 1 (so on everyone): ~3 s of training, the signal lands mid-run.
    slow = ["--set", "debug.slow_rank=1", "--set", "debug.slow_ms=20"]
    sub = tmp_path / "sub"
    t0 = time.monotonic()
    proc, id_file = sbatch.start("train.sbatch", ["-n", "4", *TIME], REQUEUE_JOB + slow, sub,
                                 env={"MPISGD_LAUNCHER": launcher})
    try:
        job_id = sbatch.job_id(id_file)
        run = sub / "runs" / f"slurm-{job_id}"
        deadline = time.monotonic() + 90
        while not list((run / "checkpoints").glob("step-*")):
            assert time.monotonic() < deadline and proc.poll() is None, \
                f"training never reached its first checkpoint:\n{job_logs(sub)}"
            time.sleep(0.1)
        # What --signal=B:USR1@N does before the time limit: SIGUSR1 to the batch shell.
        sbatch.cluster.run("scancel", "--batch", "--signal=USR1", job_id)
    except BaseException:
        sbatch.cancel(proc, id_file)
        raise
    job = sbatch.finish(proc, id_file, sub, t0, timeout=180)
    _check(job)
    assert "got SIGUSR1" in job.log
    assert "mpisgd: stopped: stopped by a signal" in job.log
    assert "mpisgd exited with 75" in job.log and "requeueing job" in job.log
    assert "SLURM_RESTART_COUNT=1" in job.log, job.log
    assert "resuming at step" in job.log
    assert theta_of(run) == theta_of(requeue_reference)


def test_sweep_array_of_3_points_and_gathered_table(sbatch, tmp_path):
    sweep = tmp_path / "lr.txt"
    sweep.write_text("# learning rates\n--set optimizer.lr=0.01\n\n"
                     "--set optimizer.lr=0.05 --set 'optimizer.momentum=0.5'\n"
                     "--set optimizer.lr=0.1\n")
    job = sbatch("sweep.sbatch", ["--array=1-3", "-n", "2", *TIME],
                 [str(sweep), *SMALL, "--set", "train.epochs=2"], tmp_path, timeout=180)
    _check(job)
    runs = [job.run(f"{job.id}_{i}") for i in (1, 2, 3)]
    assert all((r / "summary.json").is_file() for r in runs), job.log
    optimizer = [tomllib.loads((r / "config.toml").read_text())["optimizer"] for r in runs]
    lrs = [o["lr"] for o in optimizer]
    assert lrs == [0.01, 0.05, 0.1]
    assert [o["momentum"] for o in optimizer] == [0.9, 0.5, 0.9]
    table = tmp_path / "sweep.csv"
    r = subprocess.run([sys.executable, str(SLURM_DIR / "gather.py"),
                        *map(str, runs), "-o", str(table)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [row["run"] for row in rows] == [r.name for r in runs]
    assert [float(row["optimizer.lr"]) for row in rows] == lrs
    assert [float(row["test.mse"]) for row in rows] == [summary_of(r)["test"]["mse"] for r in runs]
    assert all(row["status"] == "done" for row in rows)
    md = subprocess.run([sys.executable, str(SLURM_DIR / "gather.py"), str(tmp_path / "runs")],
                        capture_output=True, text=True, timeout=60).stdout
    assert md.startswith("| run | optimizer.lr | optimizer.momentum | status |")
    assert len(md.strip().splitlines()) == 2 + 3


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_failing_rank_ends_the_job_promptly(sbatch, tmp_path, launcher):
    job = sbatch("train.sbatch", ["-n", "4", "--time=5"],
                 SMALL + ["--set", "train.epochs=50", "--set", "debug.fail_rank=2",
                          "--set", "debug.fail_step=3"], tmp_path,
                 env={"MPISGD_LAUNCHER": launcher}, timeout=120)
    assert job.returncode != 0, job.log
    assert job.seconds < 60, f"took {job.seconds:.0f} s (--time=5 minutes)"
    assert "injected failure" in job.log and "rank 2" in job.log
    assert "requeueing" not in job.log


# ---- relaunching inside the allocation (MPISGD_RELAUNCHES; as `mpisgd launch`) -----------

@pytest.mark.parametrize("rc, attempts", [(1, 3), (137, 3), (2, 1), (4, 1), (75, 1), (127, 1),
                                          (0, 1)])
def test_relaunches_follow_the_exit_code_rules(sbatch, tmp_path, fake_python, rc, attempts):
    job = sbatch("train.sbatch", ["-n", "1", *TIME], [], tmp_path,
                 env={"MPISGD_PYTHON": fake_python, "FAKE_RC": str(rc), "MPISGD_RELAUNCHES": "2",
                      "MPISGD_REQUEUE": "0"}, timeout=60)
    _check(job, rc)
    assert job.log.count("ARGS -m mpisgd --out") == attempts, job.log
    assert job.log.count("relaunching with --resume auto") == attempts - 1
    if attempts == 3:
        assert f"attempt 3 of 3: relaunching with --resume auto after exit {rc}" in job.log
        assert "giving up after 3 attempts (MPISGD_RELAUNCHES=2)" in job.log


def test_a_failed_run_is_relaunched_from_its_checkpoint(sbatch, tmp_path):
    # Rank 3 raises at step 10 in every attempt; the relaunch resumes from step 7's
    # checkpoint (and fails again there: fewer ranks is `mpisgd launch`'s, not the script's).
    failing = SMALL + ["--set", "train.epochs=4", "--set", "checkpoint.every_steps=7",
                       "--set", "debug.fail_rank=3", "--set", "debug.fail_step=10"]
    job = sbatch("train.sbatch", ["-n", "4", *TIME], failing, tmp_path,
                 env={"MPISGD_RELAUNCHES": "1"}, timeout=150)
    # srun reports the step's end by its killed tasks (137), not the rank's exit code 1.
    assert job.returncode not in (0, 2, 4, 75, 130), job.log
    assert "attempt 2 of 2: relaunching with --resume auto after exit " in job.log, job.log
    assert job.log.count("resuming at step 7 ") == 1, job.log
    assert job.log.count("injected failure in the gradient kernel at step 10") == 2
    assert "giving up after 2 attempts" in job.log


def test_a_job_that_goes_on_through_a_death_gets_srun_no_kill(sbatch, tmp_path):
    job = sbatch("train.sbatch", ["-n", "3", *TIME],
                 SMALL + ["--set", "train.epochs=1", "--set", "mode='ps'",
                          "--set", "ps.servers=1", "--set", "ps.on_worker_failure='continue'"],
                 tmp_path, timeout=120)
    _check(job)
    [line] = [x for x in job.log.splitlines() if "launch: srun" in x]
    assert " --no-kill " in line, line
    plain = sbatch("train.sbatch", ["-n", "2", *TIME], SMALL + ["--set", "train.epochs=1"],
                   tmp_path / "plain", timeout=120)
    _check(plain)
    assert "--no-kill" not in plain.log

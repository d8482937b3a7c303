"""The tests' process helpers (tests/launch/procs.py) on a stand-in launcher whose "ranks"
run in process groups of their own, as Open MPI's prterun starts them: found by the rank
Open MPI gives them, and reached by a signal meant for the whole job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from launch.procs import job_pids, kill_job, signal_job, wait_gone

# Starts one process per rank, each in a session (and process group) of its own, with only
# the rank variable of the launcher named on the command line; waits for them.
LAUNCHER = """
import os, subprocess, sys
var, marker = sys.argv[1], sys.argv[2]
ranks = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker],
                          env=dict(os.environ, **{var: str(r)}), start_new_session=True)
         for r in range(3)]
print(" ".join(str(p.pid) for p in ranks), flush=True)
for p in ranks:
    p.wait()
"""


@pytest.fixture
def job(request):
    """(launcher process, {rank: pid}, marker) under the rank variable of the parameter."""
    marker = f"mpisgd-procs-test-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")}
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, request.param, marker],
                            stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    yield proc, dict(enumerate(pids)), marker
    kill_job(proc.pid)
    for pid in pids:   # a failed test must leave nothing behind either
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


@pytest.mark.parametrize("job", ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"],
                         indirect=True)
def test_ranks_are_found_by_any_launchers_rank_variable(job):
    _, pids, marker = job
    deadline = time.monotonic() + 5   # under load a just-started process may not show yet
    while job_pids(marker) != pids and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job_pids(marker) == pids   # the launcher itself has no rank


@pytest.mark.parametrize("job", ["OMPI_COMM_WORLD_RANK"], indirect=True)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_for_the_job_reaches_ranks_in_their_own_groups(job, sig):
    proc, pids, marker = job
    assert all(os.getpgid(pid) != proc.pid for pid in pids.values())
    t0 = time.monotonic()
    signal_job(proc.pid, sig)   # killpg of the launcher alone would leave all three
    assert wait_gone(marker, timeout=10) == []
    assert time.monotonic() - t0 < 10
    assert proc.wait(timeout=10) == -sig

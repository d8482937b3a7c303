"""The per-rank supervisor (mpisgd.runtime.supervise) in real processes, without MPI: a
launcher's teardown signal after a rank's outcome is decided (its Python code finished,
or it aborts having said why) does not turn the job's exit code into a reported death,
nor does a signal the supervisor was sent too; a death nobody announced is reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mpisgd.runtime import supervise
from mpisgd.runtime.launch_env import RANK_VARS

ROOT = Path(__file__).resolve().parents[2]

# A rank under the supervisor. FINALIZE runs where mpi4py's MPI_Finalize runs: after the
# supervisor's own atexit handler (atexit runs the last registered first).
RANK = """
import atexit, os, signal, sys, time
from mpisgd.runtime import supervise
atexit.register(lambda: ({finalize}))
supervise.supervise()
{body}
sys.exit({code})
"""

TERM_SELF = "os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.3)"
# What Open MPI's launcher does: SIGTERM to the rank it started (the supervisor, which
# forwards it) and to that rank's children.
TERM_BOTH = ("os.kill(os.getppid(), signal.SIGTERM), os.kill(os.getpid(), signal.SIGTERM), "
             "time.sleep(0.3)")
KILL_SELF = "os.kill(os.getpid(), signal.SIGKILL)"


def _rank(code: int, finalize: str = "None", body: str = "",
          rank_var: str = "OMPI_COMM_WORLD_RANK") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in RANK_VARS and k != "_MPISGD_SUPERVISED"}
    env.update({rank_var: "2", "MPISGD_SUPERVISE": "1", "PYTHONPATH": str(ROOT)})
    script = RANK.format(finalize=finalize, body=body, code=code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60)


@pytest.mark.parametrize("finalize", [TERM_SELF, TERM_BOTH])
@pytest.mark.parametrize("code", [75, 2, 0])
def test_a_teardown_signal_in_mpi_finalize_keeps_the_ranks_exit_code(finalize, code):
    r = _rank(code, finalize)
    assert r.returncode == code, r.stderr
    assert "mpisgd: error" not in r.stderr


@pytest.mark.parametrize("rank_var", ["PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"])
def test_a_signal_before_the_rank_finished_is_reported_by_rank(rank_var):
    r = _rank(0, body="os.kill(os.getpid(), signal.SIGTERM); time.sleep(10)",
              rank_var=rank_var)
    assert r.returncode == -15
    assert "mpisgd: error on rank 2 (" in r.stderr
    assert "died of signal 15 (SIGTERM)" in r.stderr


def test_a_sigkill_after_the_rank_finished_is_the_launchers_teardown():
    r = _rank(75, KILL_SELF)
    assert r.returncode == -9
    assert "mpisgd: error" not in r.stderr


def test_a_signal_sent_to_the_supervisor_too_is_not_news():
    # Open MPI's teardown (or a user's kill of the whole job) before the rank finished.
    r = _rank(0, body="os.kill(os.getppid(), signal.SIGTERM); time.sleep(10)")
    assert r.returncode == -15
    assert "mpisgd: error" not in r.stderr


@pytest.mark.parametrize("then", ["os._exit(3)", "os.kill(os.getpid(), signal.SIGKILL)",
                                  "os.kill(os.getppid(), signal.SIGTERM); time.sleep(0.3); "
                                  "os._exit(3)"])
def test_an_aborting_rank_that_said_why_ends_with_its_code(then):
    # mpisgd.comm.abort_job: the message, then MPI_Abort (Open MPI's exits the process
    # with the code; hydra kills it; the launcher may SIGTERM it meanwhile).
    r = _rank(0, body=f"supervise.outcome_decided(3); {then}")
    assert r.returncode == 3, r.stderr
    assert "mpisgd: error" not in r.stderr


def test_an_exit_code_without_finishing_python_is_reported():
    r = _rank(0, body="os._exit(9)")
    assert r.returncode == -9   # the supervisor kills itself: the launcher ends the job
    assert "exited with code 9 without reporting an error" in r.stderr


def test_outcome_decided_outside_a_supervised_rank_does_nothing():
    supervise.outcome_decided(2)   # this process: no parent to tell, handlers untouched
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN

"""The step watchdog and the supervisor's report, in process (the end-to-end scenarios are
in tests/faults)."""

from __future__ import annotations

import signal
import time

import pytest

from mpisgd.comm import watchdog
from mpisgd.runtime import supervise


@pytest.fixture
def aborts(monkeypatch):
    calls = []
    monkeypatch.setattr(watchdog, "abort_job", lambda message, code: calls.append((message, code)))
    return calls


def test_a_step_computing_longer_than_the_timeout_aborts_naming_it(aborts):
    with watchdog.StepWatchdog(0.2, poll=0.02) as dog:
        dog.computing(5)
        time.sleep(0.6)
    assert aborts, "no abort"
    message, code = aborts[0]
    assert code == 3
    assert "step 5" in message and "train.step_timeout = 0.2 s" in message


def test_waiting_for_the_others_gets_twice_the_time_plus_5_s(aborts):
    with watchdog.StepWatchdog(0.2, poll=0.02) as dog:
        dog.waiting(7, "the gradient allreduce")
        time.sleep(0.6)   # past the compute limit, well within 2 x 0.2 + 5 s
    assert aborts == []


def test_fast_steps_idle_time_and_a_zero_timeout_never_abort(aborts):
    with watchdog.StepWatchdog(0.2, poll=0.02) as dog:
        for step in range(10):
            dog.computing(step)
            time.sleep(0.03)
            dog.waiting(step, "the gradient allreduce")
            dog.idle()
        time.sleep(0.5)   # idle: evaluation, checkpoints
    with watchdog.StepWatchdog(0.0) as dog:
        dog.computing(0)
        time.sleep(0.2)
    assert aborts == []


def test_the_supervisor_names_the_signal_and_its_likely_cause():
    text = supervise.describe(int(signal.SIGKILL), 1234)
    assert text.startswith("the process (pid 1234) died of signal 9 (SIGKILL)")
    assert "out-of-memory" in text
    assert "crashed" in supervise.describe(int(signal.SIGSEGV), 1)


def test_no_launcher_no_supervisor(monkeypatch):
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert supervise.launcher_rank() is None
    supervise.supervise()   # returns at once, in this very process

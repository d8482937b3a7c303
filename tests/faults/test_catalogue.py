"""Runs the reliability catalogue (tests/faults/scenarios.py): each scenario at 4 ranks in
each mode it applies to. See docs/reliability.md for the guarantees this proves."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from conftest import is_open_mpi, mpiexec_path
from launch.procs import job_pids, kill_job, signal_job, wait_gone
from report import FAULT_TIMINGS

from mpisgd.store import checkpoint

from .scenarios import BASE, BY_NAME, CASES, MODES, SCENARIOS, N

# setpriv: run as root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so file
# permissions apply (CI runs as root, and root reads a chmod-000 file).
NO_DAC = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]



@pytest.fixture(scope="module", autouse=True)
def linear_kernels_compiled(launch):
    """Every scenario is timed from its launch, and the catalogue runs first in the
    suite: on a cold cache (a fresh clone) its first launch would compile the linear
    kernels on 4 ranks while the background warm-up (conftest) compiles the others, and
    took 30.4 s against the 30 s limit in CI. Compiled here first, outside the timing."""
    env = dict(launch.env, NUMBA_CACHE_DIR=str(Path(launch.env["MPISGD_CACHE"]) / "numba"
                                               / socket.gethostname()))
    subprocess.run([sys.executable, "-m", "mpisgd.kernels.warm", "--models", "linear"],
                   env=env, check=True, timeout=300, capture_output=True)


def test_the_table_is_large_enough():
    assert len(SCENARIOS) >= 40
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS)
    modes = {m for s in SCENARIOS for m in s.modes}
    assert modes == set(MODES)


def _wait_for(paths, proc, timeout=60.0):
    """Until ``paths()`` finds something (training is under way), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if paths():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before the fault: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("the job never got to its first checkpoint")


def _run(launch, tmp, sc, mode):
    """Start the scenario, inject its action, and wait (bounded); returns (result, seconds
    from the fault to the exit, killed pid)."""
    out = tmp / "run"
    files = sc.files(tmp) if sc.files else {}
    if sc.before:
        sc.before(launch, tmp, mode, out)
    if (tmp / "newest").exists():
        files["newest"] = (tmp / "newest").read_text()
    args = [a.format(tmp=tmp, out=out, **files) for a in sc.args]
    args = BASE + MODES[mode] + args
    if "--out" not in args:
        args += ["--out", str(out)]
    prefix = NO_DAC if sc.no_dac and os.geteuid() == 0 else None
    t0 = time.monotonic()
    if not (sc.action or sc.env or prefix):
        # Nothing done to the processes from outside: the job runs in the suite's pool
        # world of this size (tests/pool.py), which also sees every rank finish the job
        # (an abort ends that world, as it would end a launch of its own).
        r = launch(N, args, timeout=sc.limit + 30)
        return r, time.monotonic() - t0, None
    proc = launch.start(N, args, env=sc.env, prefix=prefix)
    killed = None
    try:
        if sc.action:
            _wait_for(lambda: list((out / "checkpoints").glob("step-*")), proc)
            t0 = time.monotonic()
            if sc.action == "term":
                signal_job(proc.pid, signal.SIGTERM)   # as Slurm does: every process
            else:
                rank = int(sc.action.split(":")[1])
                killed = job_pids(str(out))[rank]
                os.kill(killed, signal.SIGKILL)
                t0 = time.monotonic()
        stdout, stderr = proc.communicate(timeout=sc.limit + 30)
    except subprocess.TimeoutExpired:
        kill_job(proc.pid)
        stdout, stderr = proc.communicate()
        pytest.fail(f"HANG: {sc.name} in {mode} did not end within {sc.limit + 30} s\n"
                    f"--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}")
    except BaseException:
        kill_job(proc.pid)
        proc.communicate()
        raise
    elapsed = time.monotonic() - t0
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), elapsed, killed


@pytest.mark.parametrize("name, mode", CASES, ids=[f"{n}[{m}]" for n, m in CASES])
def test_scenario(launch, tmp_path, name, mode):
    sc = BY_NAME[name]
    if is_open_mpi(mpiexec_path()):
        sc = dataclasses.replace(sc, **sc.open_mpi)
    out = tmp_path / "run"
    r, elapsed, killed = _run(launch, tmp_path, sc, mode)
    text = r.stdout + r.stderr
    where = f"{name} in {mode}: exit {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n" \
            f"--- stderr\n{r.stderr[-4000:]}"
    # Nothing of the job is left running.
    assert wait_gone(str(out), timeout=10) == [], "leftover processes: " + where
    FAULT_TIMINGS.append([f"{name}[{mode}]", elapsed])
    assert elapsed < sc.limit, f"took {elapsed:.1f} s: " + where
    if sc.code is None:
        assert r.returncode != 0, where
    else:
        assert r.returncode == sc.code, where
    for fragment in sc.says:
        assert fragment in text, f"missing {fragment!r}: " + where
    assert "Traceback" not in text, where
    if sc.code != 0 and sc.says:   # one message, from one rank or agreed
        assert len(re.findall(r"mpisgd: (error|stopped)", r.stderr)) == 1, where
    rank = sc.rank.get(mode) if isinstance(sc.rank, dict) else sc.rank
    if rank is not None:
        assert re.search(rf"mpisgd: error on rank {rank} |\brank {rank}: ", r.stderr), where
    if killed is not None:
        # The rank's supervisor names it; ranks.json maps the pid to the same rank.
        rank = int(sc.action.split(":")[1])
        assert f"mpisgd: error on rank {rank} " in r.stderr, where
        assert f"(pid {killed}) died of signal 9 (SIGKILL)" in r.stderr, where
        ranks = json.loads((out / "ranks.json").read_text())
        assert [row["rank"] for row in ranks if row["pid"] == killed] == [rank]
    if sc.after:
        sc.after(out, r)
    if sc.resume:
        _previous_checkpoint_resumes(launch, out, mode, where)


# Synchronous modes whose resumed runs must end bitwise like an uninterrupted one.
BITWISE = ("ar-flat", "ps-bsp", "ar-sparse", "ps-sparse")
_REFERENCE: dict[str, bytes] = {}


def _reference(launch, mode, folder) -> bytes:
    """The final parameters of the job run without any fault (once per mode)."""
    if mode not in _REFERENCE:
        launch(N, BASE + MODES[mode] + ["--out", str(folder)], timeout=120, check=True)
        with h5py.File(folder / "model.h5", "r") as f:
            _REFERENCE[mode] = f["theta"][...].tobytes()
    return _REFERENCE[mode]


def _previous_checkpoint_resumes(launch, out, mode, where):
    """The newest valid checkpoint loads and verifies, and ``--resume auto`` continues
    from exactly it to the end of the job (in synchronous modes: bitwise like a run
    without the fault)."""
    ckpt, _ = checkpoint.find_latest(out)
    assert ckpt is not None, "no intact checkpoint: " + where
    assert ckpt.step > 0
    r = launch(N, BASE + MODES[mode] + ["--out", str(out), "--resume", "auto"], timeout=120)
    assert r.returncode == 0, f"resume failed: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert f"resuming at step {ckpt.step} from {ckpt.path}" in r.stdout, r.stdout
    summary = json.loads((out / "summary.json").read_text())
    if "sparse" in mode:   # logistic regression on click-style rows
        assert summary["test"]["accuracy"] > 0.7, summary["test"]
    else:
        assert summary["test"]["r2"] > 0.9, summary["test"]
    if mode in BITWISE:
        with h5py.File(out / "model.h5", "r") as f:
            resumed = f["theta"][...].tobytes()
        assert resumed == _reference(launch, mode, out.parent / "reference"), \
            "the resumed run ended differently from an uninterrupted one: " + where

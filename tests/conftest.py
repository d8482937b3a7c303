"""Shared fixtures: launching mpiexec under a timeout, and a per-session cache."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import report
from launch.procs import kill_job
from pool import Pools
from report import record_launch

ROOT = Path(__file__).resolve().parents[1]

# The suite's own processes (unit tests compile kernels too) share the numba cache of the
# launched jobs when MPISGD_CACHE names one: each kernel is compiled once per test run.
if os.environ.get("MPISGD_CACHE"):
    from mpisgd.runtime.paths import set_numba_cache_dir

    set_numba_cache_dir()


def mpiexec_path() -> str:
    """The MPI launcher beside this Python (the venv's MPICH or Open MPI from PyPI), else
    the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        pytest.skip("no mpiexec: install the 'mpich' extra or a site MPI")
    return found


@functools.cache
def is_open_mpi(mpiexec: str) -> bool:
    """Whether ``mpiexec`` is Open MPI's ("mpiexec (Open MPI) 5.0.x", "(OpenRTE) 4.1.x");
    MPICH's hydra prints its build details instead."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Open MPI" in out or "OpenRTE" in out


def mpiexec_cmd() -> list[str]:
    """The launcher and the options every test launch needs: Open MPI refuses more ranks
    than cores ("not enough slots") without --oversubscribe, an option MPICH rejects."""
    path = mpiexec_path()
    return [path, "--oversubscribe"] if is_open_mpi(path) else [path]


def launcher_env(env: dict[str, str], mpiexec: str) -> dict[str, str]:
    """``env`` with what the launcher needs to start at all: Open MPI's mpirun refuses to
    run as root (CI, containers) unless told twice (`make` sets these too)."""
    env = dict(env)
    if is_open_mpi(mpiexec) and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


# Commands that run outside the collective error discipline (see mpisgd.cli.main).
_OWN_PROCESS = ("data", "info", "plot", "compare")


class Launcher:
    """Runs ``mpiexec -n N python ...`` with a hard timeout; kills the whole job on expiry.

    An ordinary job (``python -m mpisgd`` with no environment or wrapper of its own, and
    ``fresh`` not asked) runs in the pool world of its size (tests/pool.py) unless
    ``MPISGD_TEST_POOL=0``: a test about the launch itself (signals, process deaths,
    start-up, the supervisor) asks for ``fresh=True`` or uses :meth:`start`.
    """

    def __init__(self, env: dict[str, str], pools: Pools | None = None):
        self.env = env
        self.pools = pools

    def start(self, n: int, args: list[str], *, env: dict[str, str] | None = None,
              prefix: list[str] | None = None) -> subprocess.Popen:
        """Start ``[PREFIX] mpiexec -n N python -m mpisgd ARGS`` in its own process group.

        The caller owns the timeout: wait with ``communicate(timeout=...)`` and kill the
        job (``launch.procs.kill_job``: every rank, whatever its process group) if it
        expires.
        """
        cmd = [*(prefix or []), *mpiexec_cmd(), "-n", str(n), sys.executable, "-m", "mpisgd",
               *args]
        record_launch(n, False, None)
        # start() is for tests about processes (kills, signals): each rank supervised.
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(self.env, MPISGD_SUPERVISE="1", **(env or {})),
                                cwd=str(ROOT),
                                start_new_session=True)

    def __call__(self, n: int, args: list[str], *, timeout: float = 120, module: bool = True,
                 env: dict[str, str] | None = None, cwd: str | None = None,
                 check: bool = False, fresh: bool = False) -> subprocess.CompletedProcess:
        cmd = [*mpiexec_cmd(), "-n", str(n), sys.executable]
        cmd += ["-m", "mpisgd", *args] if module else list(args)
        t0 = time.monotonic()
        pooled = (self.pools is not None and module and not env and not fresh
                  and not (args and args[0] in _OWN_PROCESS))
        if pooled:
            code, out, err = self.pools.run(n, [str(a) for a in args], timeout, cwd)
        else:
            code, out, err = self._launch(cmd, timeout, env, cwd)
        record_launch(n, pooled, time.monotonic() - t0)
        if code is None:
            pytest.fail(f"timed out after {timeout} s{' (pooled)' if pooled else ''}: "
                        f"{' '.join(cmd)}\n--- stdout\n{out}\n--- stderr\n{err}")
        result = subprocess.CompletedProcess(cmd, code, out, err)
        if check and result.returncode != 0:
            pytest.fail(f"exit {result.returncode}: {' '.join(cmd)}\n"
                        f"--- stdout\n{out}\n--- stderr\n{err}")
        return result

    def _launch(self, cmd: list[str], timeout: float, env: dict[str, str] | None,
                cwd: str | None) -> tuple[int | None, str, str]:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(self.env, **(env or {})), cwd=cwd or str(ROOT),
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_job(proc.pid)
            out, err = proc.communicate()
            return None, out, err
        return proc.returncode, out, err


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """Generated data and the numba cache: reused by every launch of the session.

    ``MPISGD_CACHE`` (CI sets it inside the clone) keeps them across sessions.
    """
    env = os.environ.get("MPISGD_CACHE")
    if env:
        return Path(env)
    return tmp_path_factory.mktemp("mpisgd-cache")


@pytest.fixture(scope="session", autouse=True)
def warm_kernels(session_cache):
    """Compile every model's kernels once, in the background at low priority: a cold
    cache (a fresh clone) costs a minute of compiling, which then runs on the core the
    first tests leave idle instead of inside them (mpisgd/kernels/warm.py)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(session_cache / "numba" / socket.gethostname()),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Models in reverse: the first launches (the default linear job) compile their own.
    proc = subprocess.Popen([sys.executable, "-m", "mpisgd.kernels.warm", "--reverse"], env=env,
                            cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: os.nice(10))
    yield
    # A short run (one test file) need not wait for kernels it did not use: numba
    # writes each cache file under a temporary name, so a kill leaves no partial entry.
    try:
        _, err = proc.communicate(timeout=1)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    # A failure here is a kernel that does not compile: the tests that use it say more.
    assert proc.returncode in (0, -9), err


@pytest.fixture(scope="session")
def launch(session_cache) -> Launcher:
    env = dict(os.environ)
    env["MPISGD_CACHE"] = str(session_cache)
    env.pop("NUMBA_CACHE_DIR", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    # The per-rank supervisor (mpisgd/runtime/supervise.py) doubles the processes of a launch;
    # only the tests about process deaths need it (they launch with start()).
    env.setdefault("MPISGD_SUPERVISE", "0")
    env = launcher_env(env, mpiexec_path())
    pools = None
    if os.environ.get("MPISGD_TEST_POOL", "1") != "0":
        pools = Pools(mpiexec_cmd(), env, str(ROOT))
    try:
        yield Launcher(env, pools)
    finally:
        if pools is not None:
            pools.close()


def pytest_terminal_summary(terminalreporter):
    for line in report.fault_line() + report.launch_table():
        terminalreporter.write_line(line)


@pytest.fixture
def by_thread_count():
    """``run(fn)`` calls ``fn()`` at 1, 2, then 1 numba threads and returns
    ``{threads: [results]}``; the thread count is restored afterwards."""
    import numba

    def run(fn):
        before = numba.get_num_threads()
        results = {}
        try:
            for threads in (1, 2, 1):
                numba.set_num_threads(threads)
                results.setdefault(threads, []).append(fn())
        finally:
            numba.set_num_threads(before)
        return results

    return run


# `make test-quick`: every unit test and these launches, one per mode (allreduce flat,
# hierarchical and local; ps bsp, asp and ssp; eval/predict; the error agreement; the
# SIGTERM race of asynchronous servers; mpisgd launch relaunching a failing job).
QUICK = (
    "tests/launch/test_train.py::test_default_job_recovers_truth_and_least_squares",
    "tests/launch/test_train.py::test_full_batch_gd_and_local_mode",
    "tests/launch/test_topology.py::test_hierarchical_trains_like_flat_with_parameters_once_per_node[8-as-2x4]",
    "tests/launch/test_ps.py::test_bsp_equals_allreduce_with_same_workers[float64-1e-06]",
    "tests/launch/test_ps.py::test_async_linear_reaches_least_squares[asp]",
    "tests/launch/test_ps.py::test_ssp_never_runs_more_than_s_ahead[2]",
    "tests/launch/test_eval.py::test_predict_at_3_ranks_matches_numpy",
    "tests/mpi/test_collectives.py::test_error_agreement_at_size[3]",
    "tests/faults/test_catalogue.py::test_scenario[sigterm-one-server[ps-asp]]",
    "tests/launch/test_relaunch.py::test_a_rank_that_keeps_failing_is_left_out",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith("tests/unit/") or item.nodeid in QUICK:
            item.add_marker(pytest.mark.quick)

"""Shared fixtures: launching mpiexec under a timeout, and a per-session cache."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def mpiexec_path() -> str:
    """The MPI launcher beside this Python (pip's mpich), else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        pytest.skip("no mpiexec: install the 'mpich' extra or a site MPI")
    return found


class Launcher:
    """Runs ``mpiexec -n N python ...`` with a hard timeout; kills the whole group on expiry."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def start(self, n: int, args: list[str], *, env: dict[str, str] | None = None,
              prefix: list[str] | None = None) -> subprocess.Popen:
        """Start ``[PREFIX] mpiexec -n N python -m mpisgd ARGS`` in its own process group.

        The caller owns the timeout: wait with ``communicate(timeout=...)`` and kill the
        group (``os.killpg``) if it expires.
        """
        cmd = [*(prefix or []), mpiexec_path(), "-n", str(n), sys.executable, "-m", "mpisgd",
               *args]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(self.env, **(env or {})), cwd=str(ROOT),
                                start_new_session=True)

    def __call__(self, n: int, args: list[str], *, timeout: float = 120, module: bool = True,
                 env: dict[str, str] | None = None, cwd: str | None = None,
                 check: bool = False) -> subprocess.CompletedProcess:
        cmd = [mpiexec_path(), "-n", str(n), sys.executable]
        cmd += ["-m", "mpisgd", *args] if module else list(args)
        full_env = dict(self.env, **(env or {}))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=full_env, cwd=cwd or str(ROOT), start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n"
                        f"--- stdout\n{out}\n--- stderr\n{err}")
        result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        if check and result.returncode != 0:
            pytest.fail(f"exit {result.returncode}: {' '.join(cmd)}\n"
                        f"--- stdout\n{out}\n--- stderr\n{err}")
        return result


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """Generated data and the numba cache: reused by every launch of the session.

    ``MPISGD_CACHE`` (CI sets it inside the clone) keeps them across sessions.
    """
    env = os.environ.get("MPISGD_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("mpisgd-cache")


@pytest.fixture(scope="session")
def launch(session_cache) -> Launcher:
    env = dict(os.environ)
    env["MPISGD_CACHE"] = str(session_cache)
    env.pop("NUMBA_CACHE_DIR", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return Launcher(env)


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


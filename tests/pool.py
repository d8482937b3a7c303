"""Long-lived MPI worlds that run the suite's ordinary jobs (client of pool_server.py).

A job that needs nothing of a launch of its own (no environment of its own, no wrapper
command, no process death) runs in the pool world of its size: the same ``mpisgd``
arguments, the same run folder and messages, the same exit code for an agreed error,
without N interpreters starting and loading the kernels again. A job that aborts ends
its world (as it would end its own launch) and the next job of that size starts a
fresh one. ``MPISGD_TEST_POOL=0`` launches every job on its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from launch.procs import kill_job
from pool_server import wake

SERVER = str(Path(__file__).with_name("pool_server.py"))


class PoolWorld:
    """``mpiexec -n N python pool_server.py DIR`` and the jobs sent to it."""

    def __init__(self, mpiexec: list[str], n: int, env: dict[str, str], cwd: str):
        self.n = n
        self.control = Path(tempfile.mkdtemp(prefix=f"mpisgd-pool{n}-"))
        self.log_out = open(self.control / "world.out", "w+")
        self.log_err = open(self.control / "world.err", "w+")
        self.proc = subprocess.Popen([*mpiexec, "-n", str(n), sys.executable, SERVER,
                                      str(self.control)], stdout=self.log_out,
                                     stderr=self.log_err, env=env, cwd=cwd,
                                     start_new_session=True)
        self.jobs = 0

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, args: list[str], timeout: float, cwd: str | None
            ) -> tuple[int | None, str, str]:
        """(exit code, stdout, stderr) of one job; code None when it timed out (the
        world is killed then)."""
        k, self.jobs = self.jobs, self.jobs + 1
        marks = (_size(self.control / "world.out"), _size(self.control / "world.err"))
        tmp = self.control / f"job-{k}.tmp"
        tmp.write_text(json.dumps({"argv": args, "cwd": cwd}))
        tmp.rename(self.control / f"job-{k}.json")
        wake(self.control, self.n)
        result = self.control / f"result-{k}.json"
        deadline = time.monotonic() + timeout
        code = None
        while time.monotonic() < deadline:
            if result.exists():
                code = json.loads(result.read_text())["code"]
                break
            if self.proc.poll() is not None:   # the job ended the world (an abort)
                code = self.proc.returncode
                break
            time.sleep(0.005)
        if code is None:
            self.kill()
        out = "".join(self._read(f"job-{k}.{r}.out") for r in range(self.n))
        err = "".join(self._read(f"job-{k}.{r}.err") for r in range(self.n))
        if not self.alive or code is None:   # the launcher's own words, as a launch shows
            out += _tail(self.control / "world.out", marks[0])
            err += _tail(self.control / "world.err", marks[1])
        return code, out, err

    def _read(self, name: str) -> str:
        try:
            return (self.control / name).read_text()
        except OSError:
            return ""

    def stop(self) -> None:
        """Ask the world to end after its current job (see :meth:`close`)."""
        (self.control / "stop").touch()
        wake(self.control, self.n)

    def close(self, timeout: float = 20.0) -> None:
        if self.alive:
            self.stop()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log_out.close()
        self.log_err.close()

    def kill(self) -> None:
        kill_job(self.proc.pid)   # every rank: under Open MPI each has a group of its own
        self.proc.wait()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(path: Path, start: int) -> str:
    with open(path, errors="replace") as f:
        f.seek(start)
        return f.read()


class Pools:
    """One pool world per world size, started on first use, closed at the end."""

    def __init__(self, mpiexec: list[str], env: dict[str, str], cwd: str):
        """``mpiexec``: the launcher command (with its options), without ``-n N``."""
        self.mpiexec, self.env, self.cwd = mpiexec, env, cwd
        self.worlds: dict[int, PoolWorld] = {}

    def run(self, n: int, args: list[str], timeout: float, cwd: str | None):
        world = self.worlds.get(n)
        if world is None or not world.alive:
            if world is not None:
                world.close()
            world = self.worlds[n] = PoolWorld(self.mpiexec, n, self.env, self.cwd)
        return world.run(args, timeout, cwd)

    def close(self, grace: float = 3.0) -> None:
        """End every world: told first, so that they end side by side; what has not
        ended after ``grace`` seconds (interpreter and MPI teardown) is killed."""
        for world in self.worlds.values():
            world.stop()
        deadline = time.monotonic() + grace
        for world in self.worlds.values():
            world.close(max(0.0, deadline - time.monotonic()))
        self.worlds.clear()

"""Finding the processes of a launched job by rank, and checking none is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def job_pids(marker: str) -> dict[int, int]:
    """{MPI rank: pid} of the Python processes whose command line contains ``marker``."""
    found: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if marker not in cmd or "python" not in cmd or "mpiexec" in cmd:
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"PMI_RANK="):
                found.setdefault(int(item.split(b"=", 1)[1]), []).append(int(proc.name))
    # Each rank is a supervising parent and the child that runs the job (mpisgd.supervise):
    # the rank's process is the child, the one whose parent is also listed.
    return {rank: _child(pids) for rank, pids in found.items()}


def _child(pids: list[int]) -> int:
    for pid in pids:
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid in pids:
            return pid
    return pids[0]


def kill_rank_when_running(proc: subprocess.Popen, marker: str, rank: int, n: int,
                           wait_for: Path, timeout: float = 60) -> None:
    """SIGKILL ``rank`` once ``wait_for`` exists (training has started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = job_pids(marker)
        if len(pids) == n and wait_for.exists():
            os.kill(pids[rank], signal.SIGKILL)
            return
        if proc.poll() is not None:
            raise AssertionError(f"job ended before the kill: {proc.communicate()}")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the job never reached training")


def wait_gone(marker: str, timeout: float = 10) -> list[int]:
    """Pids of the job still alive after ``timeout`` seconds (should be none)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not job_pids(marker):
            return []
        time.sleep(0.2)
    return list(job_pids(marker).values())

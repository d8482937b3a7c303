"""Finding the processes of a launched job by rank, and checking none is left behind."""

from __future__ import annotations

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


def wait_gone(marker: str, timeout: float = 10) -> list[int]:
    """Pids of the job still alive after ``timeout`` seconds (should be none)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not job_pids(marker):
            return []
        time.sleep(0.2)
    return list(job_pids(marker).values())

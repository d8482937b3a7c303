"""Finding the processes of a launched job by rank, signalling every one of them, and
checking none is left behind.

MPICH's hydra leaves the ranks in the launcher's process group, so ``killpg`` of the
launcher reaches them all; Open MPI's prterun puts each rank in a process group of its
own, so a signal meant for the whole job (as Slurm sends it) must name every pid.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from mpisgd.runtime.launch_env import launcher_rank


def _ppid(pid: int | str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _environ(proc: Path) -> dict[str, str]:
    items = (proc / "environ").read_bytes().split(b"\0")
    return dict(i.decode(errors="replace").split("=", 1) for i in items if b"=" in i)


def job_pids(marker: str) -> dict[int, int]:
    """{MPI rank: pid} of the Python processes whose command line contains ``marker``,
    under any launcher (the rank as mpisgd reads it: PMI_RANK, OMPI_COMM_WORLD_RANK, ...)."""
    found: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if marker not in cmd or "python" not in cmd or "mpiexec" in cmd:
                continue
            rank = launcher_rank(_environ(proc))
        except OSError:
            continue
        if rank is not None and rank.isdigit():   # a launcher itself has no rank
            found.setdefault(int(rank), []).append(int(proc.name))
    # Each rank is a supervising parent and the child that runs the job (mpisgd.supervise):
    # the rank's process is the child, the one whose parent is also listed.
    return {rank: _child(pids) for rank, pids in found.items()}


def _child(pids: list[int]) -> int:
    for pid in pids:
        if _ppid(pid) in pids:
            return pid
    return pids[0]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            parent = _ppid(proc.name)
            if parent is not None:
                children.setdefault(parent, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def signal_job(pid: int, sig: int) -> None:
    """``sig`` to the launcher ``pid`` (started in a session of its own), its process
    group and every process below it, in whatever process group (as Slurm signals every
    process of a job). Gone processes are skipped."""
    below = descendants(pid)
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    for child in below:
        try:
            if os.getpgid(child) != pid:   # the group had it already: once is what Slurm sends
                os.kill(child, sig)
        except ProcessLookupError:
            pass


def kill_job(pid: int) -> None:
    """SIGKILL to the launcher and every process of its job (a timed-out test's cleanup:
    under Open MPI ranks outlive a killed launcher unless killed themselves)."""
    signal_job(pid, signal.SIGKILL)


def wait_gone(marker: str, timeout: float = 10) -> list[int]:
    """Pids of the job still alive after ``timeout`` seconds (should be none)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not job_pids(marker):
            return []
        time.sleep(0.2)
    return list(job_pids(marker).values())

"""The MPI launcher that starts a job: which one it is, and the flags it needs.

Which launcher a command is decides two flags. Open MPI refuses more ranks than cores
("not enough slots") without ``--oversubscribe``, an option MPICH's hydra rejects. And
each launcher ends every rank of a job when one process dies unless told not to; a job
whose survivors go on without the dead process (``ps.on_worker_failure = "continue"``)
needs that flag, and only such a job: for every other job a dead rank's partners would
wait for it until a watchdog fires instead of ending at once.

Keep-alive flags, measured with a 3-rank mpi4py probe (``MPI.ERRORS_RETURN``; half a
second after a barrier one rank dies, the other two exchange 1000 messages, then exit
without ``MPI_Finalize``; 10 runs each):

- MPICH's hydra (5.0.2), ``-disable-auto-cleanup``: the survivors finished in 10 of 10
  runs when the process *exited* (mpiexec then returns its exit code), but in only 2 of
  10 when it was *killed* (SIGKILL): hydra's proxy, writing to the dead process's PMI
  socket, fails ("HYDU_sock_write ... Broken pipe") and the job ends.
- Open MPI 5 (prterun, 5.0.11), ``--enable-recovery``: 10 of 10 after an exit and after
  a SIGKILL (mpiexec returns 0 after a SIGKILL), and receives from any source go on
  working (10 of 10, 300 such receives after the death); a receive from the dead rank
  itself waits forever (mpisgd's servers learn of a death from the rank's supervisor or
  a missing heartbeat, not from MPI). ``--with-ft ulfm`` keeps the survivors too,
  but under ULFM every receive from any source fails (``MPI_ERR_PROC_FAILED``) after a
  death until the program acknowledges it (``MPIX_Comm_failure_ack``), which mpisgd
  does not, and it warns that the shared-memory window component (osc sm) "is not
  tested for post-failure operation".
- Open MPI 4 (orterun): ``--enable-recovery`` (ULFM is not in 4.x); not measured here.
- Slurm: ``srun --no-kill``: a step goes on when one of its nodes fails.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

from mpisgd.runtime.launch_env import cores_here

HYDRA, PRTERUN, ORTERUN, SRUN, UNKNOWN = "hydra", "prterun", "orterun", "srun", "unknown"
NAMES = {HYDRA: "MPICH (hydra)", PRTERUN: "Open MPI 5 (prterun)",
         ORTERUN: "Open MPI 4 (orterun)", SRUN: "Slurm (srun)", UNKNOWN: "an unknown launcher"}
# The one mapping from launcher to the flags that keep a job going through a process's
# death (see the module's text for what each was measured to do).
KEEP_ALIVE = {HYDRA: ["-disable-auto-cleanup"], PRTERUN: ["--enable-recovery"],
              ORTERUN: ["--enable-recovery"], SRUN: ["--no-kill"]}
OVERSUBSCRIBE = "--oversubscribe"


def keep_alive_flags(kind: str) -> list[str] | None:
    """The flags that make launcher ``kind`` keep a job going when one of its processes
    dies; None when no such flag is known for it."""
    flags = KEEP_ALIVE.get(kind)
    return list(flags) if flags is not None else None


def default_mpiexec() -> str | None:
    """The MPI launcher beside this Python (the venv's MPICH or Open MPI from PyPI), else
    ``mpiexec`` (or ``mpirun``) on PATH; None when there is none."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    return shutil.which("mpiexec") or shutil.which("mpirun")


def kind_of(name: str, version_text: str) -> str:
    """The launcher kind from its program name and what ``NAME --version`` printed."""
    if Path(name).name == "srun" or version_text.lower().startswith("slurm"):
        return SRUN
    if "HYDRA" in version_text:
        return HYDRA
    if "OpenRTE" in version_text:
        return ORTERUN
    if "Open MPI" in version_text:
        words = version_text.split()
        version = words[words.index("MPI)") + 1] if "MPI)" in words[:-1] else ""
        return ORTERUN if version.split(".")[0] in ("1", "2", "3", "4") else PRTERUN
    return UNKNOWN


@functools.cache
def launcher_kind(program: str) -> str:
    """The kind of the launcher ``program`` (a path or a name on PATH), asked with
    ``--version``; UNKNOWN when it cannot be run or is none of the known ones."""
    if Path(program).name == "srun":   # srun --version is "slurm 23.11.4": no need to ask
        return SRUN
    try:
        out = subprocess.run([program, "--version"], capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN
    return kind_of(program, out.stdout + out.stderr)


def oversubscribe_flags(kind: str, ranks: int, command: list[str]) -> list[str]:
    """``--oversubscribe`` when Open MPI is asked for more ranks than this node's cores
    and ``command`` does not already say so."""
    needed = kind in (PRTERUN, ORTERUN) and ranks > cores_here()
    return [OVERSUBSCRIBE] if needed and OVERSUBSCRIBE not in command else []


def keep_alive_line(kind: str, program: str) -> str:
    """One line for ``mpisgd info``: whether this launcher can keep a job going through
    a process's death, and with which flag."""
    flags = keep_alive_flags(kind)
    where = f"{NAMES[kind]}, {program}"
    if flags is None:
        return f"no known flag ({where}); under Slurm: srun {' '.join(KEEP_ALIVE[SRUN])}"
    slurm = "" if kind == SRUN else f"; under Slurm: srun {' '.join(KEEP_ALIVE[SRUN])}"
    return f"yes: {Path(program).name} {' '.join(flags)} ({where}){slurm}"

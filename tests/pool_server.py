"""One MPI world that runs many mpisgd jobs, one after another (the test suite's job pool).

    mpiexec -n N python tests/pool_server.py CONTROL_DIR

Launching a world costs more than most test jobs: N interpreters import numpy, numba,
h5py and mpi4py, and load the kernels. As mpi4py runs its whole suite under one
launcher, the suite runs its ordinary jobs in a few long-lived worlds (tests/pool.py).

Protocol, through files in CONTROL_DIR (all ranks share the machine):
- the client writes ``job-K.json`` atomically: ``{"argv": [...], "cwd": DIR}``;
- every rank runs ``mpisgd <argv>`` as ``python -m mpisgd`` would, with its stdout and
  stderr in ``job-K.R.out`` / ``job-K.R.err`` (line-buffered: what a job printed
  before an abort is kept), and each job duplicates the world communicator;
- rank 0 writes ``result-K.json`` (``{"code": C}``) once every rank has finished;
- ``stop`` ends the loop. An error that aborts the job aborts this world: the client
  sees the launcher's exit code, as it would for a job of its own.

While waiting, each rank sleeps in ``select`` on its FIFO ``wake-R``, which the client
writes a byte to after each job file and the stop file (``wake``): no rank spins in MPI,
and an idle world costs no CPU (polling every 5 ms cost an idle 8-rank world 6% of a
core, and the suite keeps one world per size alive throughout). A rank checks the folder
before each sleep and at least once a second, so a byte written before its FIFO existed
is not needed. The client bounds every job with its test's timeout and kills the
world's process group when it expires.
"""

from __future__ import annotations

import json
import os
import select
import sys
from pathlib import Path


def wake(control: Path, n: int) -> None:
    """Wake every rank of the world in ``control`` (the client, after writing a file)."""
    for rank in range(n):
        try:
            fd = os.open(control / f"wake-{rank}", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:   # not made yet: that rank looks at the folder before it sleeps
            continue
        try:
            os.write(fd, b"x")
        except BlockingIOError:   # the pipe is full of unread wake-ups: it will wake
            pass
        finally:
            os.close(fd)


def _fifo(control: Path, rank: int) -> int:
    path = control / f"wake-{rank}"
    if not path.exists():
        os.mkfifo(path)
    # Read-write: a FIFO with no writer left reads as end-of-file, which select would
    # report as ready again and again; this rank is a writer of its own, so it never is.
    return os.open(path, os.O_RDWR | os.O_NONBLOCK)


def _wait_for(path: Path, stop: Path, fd: int) -> bool:
    while not path.exists():
        if stop.exists():
            return False
        select.select([fd], [], [], 1.0)
        try:
            os.read(fd, 65536)
        except BlockingIOError:
            pass
    return True


def main(control: Path) -> int:
    from mpisgd.runtime.launch_env import tune_for_oversubscription
    from mpisgd.runtime.paths import set_numba_cache_dir

    set_numba_cache_dir()
    tune_for_oversubscription()
    from mpi4py import MPI

    from mpisgd import cli

    rank = MPI.COMM_WORLD.Get_rank()
    home = os.getcwd()
    stdout, stderr = sys.stdout, sys.stderr
    fd = _fifo(control, rank)
    k = 0
    while _wait_for(control / f"job-{k}.json", control / "stop", fd):
        job = json.loads((control / f"job-{k}.json").read_text())
        os.chdir(job.get("cwd") or home)
        with open(control / f"job-{k}.{rank}.out", "w", buffering=1) as out, \
                open(control / f"job-{k}.{rank}.err", "w", buffering=1) as err:
            sys.stdout, sys.stderr = out, err
            try:
                code = cli.run_collective(*cli.collective_command(job["argv"]))
            finally:
                sys.stdout, sys.stderr = stdout, stderr
                os.chdir(home)
        codes = MPI.COMM_WORLD.gather(code, root=0)
        if rank == 0:
            tmp = control / f"result-{k}.tmp"
            tmp.write_text(json.dumps({"code": codes[0], "codes": codes}))
            tmp.rename(control / f"result-{k}.json")
        k += 1
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

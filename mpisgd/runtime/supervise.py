"""Per-rank supervision: a rank killed by a signal is reported by rank, not by a pid.

A process killed with SIGKILL (the kernel's out-of-memory killer, a batch system, a
user) cannot say anything. The launcher notices and ends the job, but reports it
vaguely: MPICH's hydra prints "Killed (signal 9)" with the pid of some *other* process
of the node. So, as torchrun's agent does, every rank started by an MPI launcher forks
before MPI is initialised: the child runs the job, the parent only waits for it,
forwards the signals a launcher or batch system sends (SIGTERM, SIGUSR1, SIGINT, ...),
and when the child dies of a signal prints one line naming the rank, the host, the pid
and the signal, then dies of the same signal, which makes the launcher end the job.

The child asks the kernel to kill it if the parent dies (PR_SET_PDEATHSIG), so when the
launcher kills the parents during its cleanup no child is left behind.

``MPISGD_SUPERVISE=0`` turns it off (one process per rank, as before). Linux only.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import sys
import time

# The environment variable through which each launcher gives a process its rank.
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")
_FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP,
            signal.SIGQUIT)
_PR_SET_PDEATHSIG = 1
_CRASHES = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}


def launcher_rank() -> str | None:
    for name in _RANK_VARS:
        if name in os.environ:
            return os.environ[name]
    return None


def supervise() -> None:
    """Call first thing, before MPI is initialised. Returns in the process that runs the
    job; in a supervising parent it never returns."""
    rank = launcher_rank()
    if (rank is None or os.environ.get("MPISGD_SUPERVISE", "1") == "0"
            or not sys.platform.startswith("linux") or os.environ.get("_MPISGD_SUPERVISED")):
        return
    os.environ["_MPISGD_SUPERVISED"] = "1"   # a child that re-executes must not fork again
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    # The child writes one byte here when Python exits normally (atexit): an exit
    # without it went around Python (os._exit, a crash in native code) and said nothing.
    done_r, done_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(done_r)
        _die_with(parent)
        atexit.register(os.write, done_w, b"x")
        return
    os.close(done_w)
    for sig in _FORWARD:
        signal.signal(sig, lambda signum, _frame: _forward(child, signum))
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except ChildProcessError:   # reaped elsewhere: cannot happen, but never spin
            os._exit(1)
    reported = _read_all(done_r) == b"x"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        _report(rank, describe(sig, child))
        # Die of the same signal: a launcher treats a rank killed by a signal as a failed
        # job at once (hydra did not always for a plain exit code 137).
        try:
            signal.signal(sig, signal.SIG_DFL)   # SIGKILL and SIGSTOP cannot be caught
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)   # a signal that does not kill by default
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1
    if code and not reported:
        _report(rank, f"the process (pid {child}) exited with code {code} without reporting "
                      f"an error (it ended around Python: os._exit, or a crash in native "
                      f"code)")
        os.kill(os.getpid(), signal.SIGKILL)   # as above: the launcher ends the job at once
    os._exit(code)


def _report(rank: str, text: str) -> None:
    sys.stderr.write(f"mpisgd: error on rank {rank} ({socket.gethostname()}): {text}\n")
    sys.stderr.flush()
    time.sleep(0.2)   # let the launcher's proxy forward the line before it tears down


def _read_all(fd: int) -> bytes:
    """What the (exited) child wrote; never blocks, even if a process the child forked
    still holds the pipe open."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 16)
    except OSError:   # nothing written
        return b""
    finally:
        os.close(fd)


def describe(sig: int, pid: int) -> str:
    """The line a rank's death by signal ``sig`` is reported with."""
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    if sig == signal.SIGKILL:
        why = ("killed from outside the job: the kernel's out-of-memory killer (see "
               "`dmesg`), the batch system (see `sacct`), or a user")
    elif sig in _CRASHES:
        why = "the process crashed (a bug in native code, or a broken installation)"
    else:
        why = "the process was ended by a signal it does not handle"
    return f"the process (pid {pid}) died of signal {sig} ({name}): {why}"


def _forward(child: int, signum: int) -> None:
    try:
        os.kill(child, signum)
    except ProcessLookupError:
        pass


def _die_with(parent: int) -> None:
    """In the child: SIGKILL when the parent dies (the launcher's cleanup kills parents)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:   # the parent died before prctl took effect
        os._exit(1)

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

What is not news is not reported. A launcher ends a job by signalling its processes:
MPICH's hydra kills every one at once (parents included); Open MPI's prterun sends
SIGTERM to each rank it started (the parent, which forwards it) and to its children, as
soon as one rank aborts or exits with a nonzero code, and SIGKILL half a second later.
So the parent stays silent, and ends as its child did, when its child dies of a signal
the parent was sent too (the launcher, a batch system or a user ended the job, and they
know it), or after the child said its outcome was decided: its Python code finished
(its last ``atexit`` handler), or it is aborting the job having printed why
(:func:`outcome_decided`). From then on the child also ignores the signals a launcher
ends a job with: only MPI_Finalize or MPI_Abort is left, and the job's exit code (2
after an agreed error, 75 after a checkpoint on SIGTERM) must not become a false report
of a death by signal.

A job that goes on through a worker's death (``ps.on_worker_failure = "continue"``)
tells the parent a folder (:func:`report_deaths_to`); a parent that reports its child's
death also writes a notice there, ``rank-R.json``, which the job's other ranks poll
(``comm.failures``): seconds after the death, not a stall timeout later.

``MPISGD_SUPERVISE=0`` turns it off (one process per rank, as before). Linux only.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import signal
import socket
import sys
import time

from mpisgd.runtime.launch_env import launcher_rank

_FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP,
            signal.SIGQUIT)
_PR_SET_PDEATHSIG = 1
_CRASHES = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}


# What the child writes to the parent once its outcome is decided (then, when it is
# aborting, the exit code it aborts with: one byte).
_DONE = b"x"
# Before that, optionally: _NOTICES + a folder + _END, where to write a death notice.
_NOTICES, _END = b"N", b"\0"
# Signals the parent was sent (and forwarded to the child), in arrival order.
_received: list[int] = []
# A child killed by a teardown signal before its parent got the same signal waits this
# long for it (a launcher signals the two one after the other) before reporting.
_SIBLING_SIGNAL_S = 0.1
# In the child: the write end of the pipe to the parent (None: not supervised, or said).
_to_parent: list[int | None] = [None]


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
    # The child writes here once its outcome is decided (outcome_decided): an exit
    # without it went around Python (os._exit, a crash in native code) and said nothing.
    done_r, done_w = os.pipe()
    # Held back until the parent forwards them: one arriving between the fork and the
    # parent's handlers would end the parent (and so, through PDEATHSIG, the child).
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARD)
    child = os.fork()
    if child == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(done_r)
        _die_with(parent)
        _to_parent[0] = done_w
        atexit.register(outcome_decided)   # first registered, so the last to run
        return
    os.close(done_w)
    for sig in _FORWARD:
        signal.signal(sig, lambda signum, _frame: _forward(child, signum))
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except ChildProcessError:   # reaped elsewhere: cannot happen, but never spin
            os._exit(1)
    _end_like(rank, child, status, _read_all(done_r))


def _end_like(rank: str, child: int, status: int, said: bytes) -> None:
    """In the parent: end as the child ended, with one line (and a notice, when the
    child asked for them) if its end is news."""
    notices = None
    while said[:1] == _NOTICES and _END in said:   # the last folder named counts
        folder, said = said[1:].split(_END, 1)
        notices = folder.decode(errors="replace")
    decided = said[:1] == _DONE
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if len(said) > 1:   # it aborted the job (and said why), then the launcher ended it
            os._exit(said[1])
        if sig in _FORWARD and sig not in _received and not decided:
            time.sleep(_SIBLING_SIGNAL_S)   # the launcher may be signalling this process next
        if not decided and sig not in _received:
            _notice(notices, rank, child, describe(sig, child), signal=sig)
            _report(rank, describe(sig, child))
            if notices is not None:   # the job goes on: see _die_of
                os._exit(128 + sig)
        _die_of(sig)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1
    if code and not decided:
        text = (f"the process (pid {child}) exited with code {code} without reporting an "
                f"error (it ended around Python: os._exit, or a crash in native code)")
        _notice(notices, rank, child, text, code=code)
        _report(rank, text)
        if notices is not None:   # the job goes on: see _die_of
            os._exit(code)
        os.kill(os.getpid(), signal.SIGKILL)   # as below: the launcher ends the job at once
    os._exit(code)


def _die_of(sig: int) -> None:
    """Die of ``sig``: a launcher treats a rank killed by a signal as a failed job at once
    (hydra did not always for a plain exit code 137). For the same reason a job that goes
    on through a death (its rank asked for notices) exits with 128 + sig instead: hydra
    kills every process of a job one of whose processes died of a signal, even under
    ``-disable-auto-cleanup`` (measured: the survivors get SIGUSR1, its failure notice,
    then SIGKILL), but lets the others run on after a nonzero exit."""
    try:
        signal.signal(sig, signal.SIG_DFL)   # SIGKILL and SIGSTOP cannot be caught
    except (OSError, ValueError):
        pass
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)   # a signal that does not kill by default


def report_deaths_to(folder: str) -> None:
    """In a supervised rank: should it die unreported, its parent writes a notice into
    ``folder`` (created by the caller) before it reports the death. Call once, before
    the outcome is decided; does nothing in a process that is not supervised."""
    fd = _to_parent[0]
    if fd is not None:
        os.write(fd, _NOTICES + os.fsencode(folder) + _END)


def _notice(folder: str | None, rank: str, pid: int, text: str, **how) -> None:
    """In the parent: ``folder/rank-R.json``, written whole (a reader never sees half)."""
    if folder is None:
        return
    record = {"rank": int(rank), "host": socket.gethostname(), "pid": pid, "time": time.time(),
              "cause": text, **how}
    path = os.path.join(folder, f"rank-{rank}.json")
    try:
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
    except OSError:   # the folder is gone: the others find out by their timeout
        pass


def outcome_decided(abort_code: int | None = None) -> None:
    """In a supervised rank, once its outcome is decided and said: at the end of its
    Python code (registered with atexit), or before it aborts the job with
    ``abort_code`` after printing why. Tells the parent, which then reports no death, and
    ignores the launcher's teardown signals from here on (Python keeps a handler set to
    SIG_IGN through its own finalisation; others go back to SIG_DFL then). Does nothing
    in a process that is not supervised, and the second time."""
    fd, _to_parent[0] = _to_parent[0], None
    if fd is None:
        return
    code = b"" if abort_code is None else bytes([abort_code & 0xFF])
    try:
        os.write(fd, _DONE + code)
        os.close(fd)
    except OSError:   # the parent is gone: the kernel ends this process anyway
        pass
    for sig in _FORWARD:
        try:
            signal.signal(sig, signal.SIG_IGN)
        except ValueError:   # not the main thread (a watchdog aborting): the parent knows
            break


def _report(rank: str, text: str) -> None:
    sys.stderr.write(f"mpisgd: error on rank {rank} ({socket.gethostname()}): {text}\n")
    sys.stderr.flush()
    time.sleep(0.2)   # let the launcher's proxy forward the line before it tears down


def _read_all(fd: int) -> bytes:
    """What the (exited) child wrote; never blocks, even if a process the child forked
    still holds the pipe open."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 65536)
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
    _received.append(signum)
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

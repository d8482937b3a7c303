"""``mpisgd launch``: run a training job under the MPI launcher, and relaunch it from its
newest checkpoint when it fails (torchrun's ``--max-restarts``, Horovod elastic).

    python -m mpisgd launch -n N [--max-restarts K] [--min-ranks M] [--mpiexec "CMD ..."]
                            -- [JOB.toml] [mpisgd train arguments]

One process, no MPI of its own. The run folder is fixed before the first attempt (the
user's ``--out``, else the folder train would pick) and passed as ``--out`` to every
attempt, so each relaunch (``--resume auto``) continues the same run. The job's stdout
goes straight to the user (the ranks' progress bar looks at the launcher's stdout);
its stderr is copied through as it comes and read for mpisgd's messages, which name the
failing rank. Each attempt is a line of RUN/restarts.jsonl. What is relaunched and what
is not: docs/reliability.md, "Restarting a failed job".
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mpisgd.commands.launch_rules import (
    Failures,
    UsageError,
    attempt_args,
    job_parser,
    repeat_failure,
    split_command,
    why_not_restart,
)
from mpisgd.config import JobConfig, load_config
from mpisgd.errors import MpisgdError
from mpisgd.runtime import mpi_launcher
from mpisgd.store import runfolder

USAGE = ("python -m mpisgd launch -n N [--max-restarts K] [--min-ranks M] "
         "[--mpiexec \"CMD ...\"] [--keep-alive-flags] -- [JOB.toml] [train arguments]")
LOG = "restarts.jsonl"
# Signals that stop the job for good: passed on to the launcher, and no relaunch after.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
# After the launcher exits, its stderr is read this much longer for the last lines (a
# process it left behind may hold the pipe open forever).
DRAIN_S = 5.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mpisgd launch", usage=USAGE,
        description="Run a training job under the MPI launcher (mpiexec -n N) and, when it "
                    "fails, relaunch it with --resume auto into the same run folder, up to "
                    "--max-restarts times; with one rank fewer when the same rank failed "
                    "in the last two attempts (never below --min-ranks). Not relaunched: "
                    "exit 0, 2 (bad input), 4 (diverged), 75 and 130 (stopped by a "
                    "signal), or a signal sent to launch itself (passed on to the job). "
                    "Every attempt is a line of RUN/restarts.jsonl.",
        epilog="The arguments after -- are train's (mpisgd train --help); the -- may be "
               "left out when they start with the job file.")
    p.add_argument("-n", dest="ranks", type=int, metavar="N",
                   help="number of ranks of the first attempt")
    p.add_argument("--max-restarts", type=int, default=0, metavar="K",
                   help="relaunch a failed job at most K times (default 0: one launch, its "
                        "exit code passed through)")
    p.add_argument("--min-ranks", type=int, default=1, metavar="M",
                   help="never relaunch with fewer than M ranks (default 1)")
    p.add_argument("--mpiexec", metavar="\"CMD ...\"",
                   help="the launcher and its options (default: the mpiexec beside this "
                        "Python, else on PATH); srun works inside an allocation")
    p.add_argument("--keep-alive-flags", action="store_true",
                   help="print the launcher flags the job needs to go on through a "
                        "process's death (empty unless ps.on_worker_failure = "
                        "\"continue\"), and exit")
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


@dataclass
class Attempt:
    """One line of restarts.jsonl."""
    attempt: int
    ranks: int
    command: list[str]
    started: str
    duration_s: float = 0.0
    exit_code: int | None = None
    failed_ranks: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    finished: bool = False   # the run wrote summary.json of a finished run
    restarted: bool = False
    next_ranks: int | None = None
    why_not: str | None = None


@dataclass
class Plan:
    """What every attempt shares."""
    launcher: list[str]      # the launcher and the user's options for it
    kind: str                # mpi_launcher's name for it
    keep_alive: list[str]    # its flags for this job (empty: the job does not ask)
    words: list[str]         # the mpisgd arguments as given
    run: Path


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    words = args.args[1:] if args.args[:1] == ["--"] else args.args
    if args.ranks is None and not args.keep_alive_flags:
        p.error("-n N is required")
    if (args.ranks is not None and args.ranks < 1) or args.min_ranks < 1:
        p.error("-n and --min-ranks must be at least 1")
    if args.max_restarts < 0:
        p.error("--max-restarts must be 0 or more")
    try:
        launcher = shlex.split(args.mpiexec) if args.mpiexec else \
            [mpi_launcher.default_mpiexec() or ""]
        if not launcher or not launcher[0]:
            raise UsageError("no MPI launcher: no mpiexec beside this Python nor on PATH "
                             "(install the 'mpich' extra, or give --mpiexec)")
        kind = mpi_launcher.launcher_kind(launcher[0])
        cfg, known = _read_job(words)
        keep = _keep_alive(cfg, kind, launcher[0])
        if args.keep_alive_flags:
            print(" ".join(keep))
            return 0
        run = runfolder.create(cfg)   # the folder train would make, made now: fixed
    except (UsageError, MpisgdError) as exc:
        _say(f"error: {exc}")
        return 2
    if args.min_ranks > args.ranks:
        _say(f"warning: --min-ranks {args.min_ranks} is more than -n {args.ranks}: the job "
             f"is never relaunched with fewer ranks")
    if known.overwrite:
        (run / LOG).unlink(missing_ok=True)   # the run it logged is being deleted
    return relaunch_loop(Plan(launcher, kind, keep, words, run), args.ranks,
                         args.max_restarts, args.min_ranks)


def _read_job(words: list[str]) -> tuple[JobConfig, argparse.Namespace]:
    """The job as train will read it (file, --set, --out), and train's arguments."""
    _, rest = split_command(words)
    known, _ = job_parser().parse_known_args(rest)
    return load_config(known.job, known.overrides, out=known.out), known


def _keep_alive(cfg: JobConfig, kind: str, program: str) -> list[str]:
    """The launcher's keep-alive flags when the job asks to go on through a worker's death
    (ps mode, ps.on_worker_failure = "continue"); none otherwise."""
    if cfg.mode != "ps" or cfg.ps.on_worker_failure != "continue":
        return []
    flags = mpi_launcher.keep_alive_flags(kind)
    if flags is None:
        _say(f"warning: the job asks for ps.on_worker_failure = \"continue\", but "
             f"{mpi_launcher.NAMES[kind]} ({program}) has no known flag to keep a job going "
             f"through a process's death: a worker's death may end the whole job")
        return []
    return flags


def relaunch_loop(plan: Plan, ranks: int, max_restarts: int, min_ranks: int) -> int:
    """Attempts until one is not to be relaunched; returns the last one's exit code."""
    history: list[tuple[int, list[int]]] = []
    total = 1 + max_restarts
    with Forwarder() as forward:
        for number in range(1, total + 1):
            attempt, failures = run_attempt(plan, number, ranks, forward)
            history.append((ranks, attempt.failed_ranks))
            why, final = _verdict(attempt, forward, number == total, max_restarts)
            repeat = None if why else repeat_failure(history, ranks)
            if repeat is not None and ranks - 1 < min_ranks:
                why, final = (f"rank {repeat} failed in the last two attempts at {ranks} "
                              f"ranks, and {ranks - 1} would be fewer than --min-ranks "
                              f"{min_ranks}"), True
            attempt.restarted = why is None
            attempt.why_not = why
            attempt.next_ranks = None if why else ranks - (repeat is not None)
            _log(plan.run, attempt)
            if why is not None:
                if final and attempt.exit_code != 0:
                    _say(f"error: {why}: giving up after {number} attempt(s), exit "
                         f"{attempt.exit_code} (each attempt: {plan.run / LOG})")
                elif attempt.exit_code != 0 and max_restarts > 0 and not attempt.finished:
                    _say(f"not relaunching: {why}")
                return attempt.exit_code
            fewer = "" if repeat is None else (
                f" at {ranks - 1} ranks (rank {repeat} failed in the last two attempts)")
            cause = failures.cause()
            _say(f"attempt {number + 1} of {total}: relaunching with --resume auto{fewer} "
                 f"after exit {attempt.exit_code}" + (f" ({cause})" if cause else ""))
            ranks = attempt.next_ranks
    raise AssertionError("not reached: the last attempt always has a verdict")


def _verdict(attempt: Attempt, forward: Forwarder, last: bool,
             max_restarts: int) -> tuple[str | None, bool]:
    """(why this attempt is not relaunched, None when it is; whether that is giving up
    on a failing job, said as an error) before the fewer-ranks rule. With
    --max-restarts 0 launch says nothing of its own: it behaves as the launcher alone."""
    code = attempt.exit_code
    if forward.got is not None:
        name = signal.Signals(forward.got).name
        return f"mpisgd launch got {name} and passed it on: the job is to stop", False
    if code != 0 and attempt.finished:
        return (f"the run finished (summary.json written) although the launcher exited "
                f"{code}: a process died after the run's end was written, or a worker died "
                f"and the others went on (ps.on_worker_failure = \"continue\")"), False
    why = why_not_restart(code)
    if why is None and last:
        return f"--max-restarts {max_restarts} reached", max_restarts > 0
    return why, False


def finished_since(run: Path, since: float) -> bool:
    """Whether the run in ``run`` wrote its summary.json of a finished run (not one of
    a run stopped by a signal) at ``since`` (time.time()) or later."""
    path = run / "summary.json"
    try:
        if path.stat().st_mtime < since:
            return False
        return "stopped" not in json.loads(path.read_text())
    except (OSError, ValueError):   # none, or being replaced: not finished by this attempt
        return False


def command_of(plan: Plan, ranks: int, resume: bool) -> list[str]:
    """The launcher command line of one attempt."""
    front, options = plan.launcher[:1], plan.launcher[1:]
    extra = mpi_launcher.oversubscribe_flags(plan.kind, ranks, plan.launcher)
    extra += [f for f in plan.keep_alive if f not in options]
    return [*front, *options, *extra, "-n", str(ranks), sys.executable, "-m", "mpisgd",
            *attempt_args(plan.words, str(plan.run), resume=resume)]


def run_attempt(plan: Plan, number: int, ranks: int, forward: Forwarder):
    """Launch once, copy its stderr through while reading it, wait; (Attempt, Failures)."""
    cmd = command_of(plan, ranks, resume=number > 1)
    attempt = Attempt(number, ranks, cmd, time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    failures = Failures()
    t0, since = time.monotonic(), time.time()
    # The launcher gets a process group of its own: Ctrl-C at the terminal then reaches
    # launch alone, which passes it on once (twice would end the job at once). No stdin:
    # hydra reads it for rank 0, and a background group reading the terminal is stopped.
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                process_group=0)
    except OSError as exc:
        _say(f"error: cannot start {cmd[0]}: {exc.strerror or exc}")
        attempt.exit_code = 127
        return attempt, failures
    forward.child = proc
    if forward.got is not None:   # a signal came between two attempts: this one stops too
        proc.send_signal(forward.got)
    try:
        _tee(proc, failures)
    finally:
        forward.child = None
    code = proc.wait()
    attempt.exit_code = 128 - code if code < 0 else code   # killed by signal N: 128+N
    attempt.duration_s = round(time.monotonic() - t0, 3)
    attempt.failed_ranks, attempt.messages = sorted(failures.ranks), failures.messages
    attempt.finished = finished_since(plan.run, since)
    return attempt, failures


def _tee(proc: subprocess.Popen, failures: Failures) -> None:
    """Copy the launcher's stderr to ours as it comes and feed it to ``failures``."""
    fd = proc.stderr.fileno()
    deadline = None
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while deadline is None or time.monotonic() < deadline:
            if sel.select(timeout=0.5):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                _write_err(chunk)
                failures.feed(chunk)
            if deadline is None and proc.poll() is not None:
                deadline = time.monotonic() + DRAIN_S
    proc.stderr.close()
    failures.close()


def _write_err(chunk: bytes) -> None:
    stream = getattr(sys.stderr, "buffer", None)
    if stream is None:   # a replaced sys.stderr (tests): text only
        sys.stderr.write(chunk.decode(errors="replace"))
    else:
        stream.write(chunk)
    sys.stderr.flush()


def _log(run: Path, attempt: Attempt) -> None:
    """Append the attempt to RUN/restarts.jsonl; a failed write is said, not fatal."""
    try:
        run.mkdir(parents=True, exist_ok=True)
        with open(run / LOG, "a") as fh:
            fh.write(json.dumps(asdict(attempt)) + "\n")
    except OSError as exc:
        _say(f"warning: cannot write {run / LOG}: {exc.strerror or exc}")


def _say(text: str) -> None:
    sys.stderr.write(f"mpisgd launch: {text}\n")
    sys.stderr.flush()


class Forwarder:
    """While active, the signals in FORWARDED are passed on to the running launcher
    (``child``) and remembered in ``got`` (the first one): no relaunch after them."""

    def __init__(self):
        self.child: subprocess.Popen | None = None
        self.got: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> Forwarder:
        for sig in FORWARDED:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame) -> None:
        if self.got is None:
            self.got = signum
        child = self.child
        if child is not None and child.poll() is None:
            try:
                child.send_signal(signum)
            except ProcessLookupError:   # it ended between the check and the signal
                pass
